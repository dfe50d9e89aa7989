"""Multi-process training on one machine: 2 processes x 2 CPU devices equal 1 process x 4 devices; resuming on
another number of processes; a killed process.

Each process is `train.py` started with JAX's environment variables (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) and 2 simulated CPU devices; collectives cross processes through gloo.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grain
import numpy as np

import refsam_jax
from refsam_jax.data.pipeline import GlobalBatchSlice
from refsam_jax.train import metrics_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")
OVERRIDES = ["--config.log_every=1", "--config.checkpoint_every=2",
             "--config.synthetic.num_videos=8", "--config.synthetic.num_frames=4", "--config.data.batch_size=4",
             "--config.data.num_frames=2", "--config.eval.at_start=False", "--config.eval.max_expressions=2",
             "--config.progress_bar=False", "--config.text_cache=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, devices: int, process_id: int = 0, num_processes: int = 1, port: int = 0, steps: int = 4,
            extra=()):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    if num_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(process_id))
    return _spawn([sys.executable, os.path.join(ROOT, "train.py"), f"--config={DEMO}", f"--workdir={workdir}",
                   f"--config.total_steps={steps}", *OVERRIDES, *extra], env)


def _spawn(command, env) -> subprocess.Popen:
    """Starts `command` with its output in temporary files (`_output` reads them): a process blocked on a full
    pipe that nobody reads yet would hold its peers at JAX's shutdown barrier."""
    logs = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
    process = subprocess.Popen(command, env=env, stdout=logs[0], stderr=logs[1], text=True)
    process.logs = logs
    return process


def _output(process: subprocess.Popen, timeout: float):
    """(stdout, stderr) of a process, once it has exited."""
    process.wait(timeout=timeout)
    return tuple(log.seek(0) or log.read() for log in process.logs)


def _finish(processes):
    outputs = [_output(p, timeout=600) for p in processes]
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-4000:]


def test_host_shards_are_disjoint_and_make_the_one_host_batches():
    stream = grain.samplers.IndexSampler(num_records=50, shard_options=grain.sharding.NoSharding(), shuffle=True,
                                         num_epochs=1, seed=3)
    one = [stream[i] for i in range(12)]
    hosts = [GlobalBatchSlice(stream, p, 2, local_batch=2) for p in range(2)]
    for batch in range(3):
        rows = [hosts[p][2 * batch + r] for p in range(2) for r in range(2)]
        assert [m.record_key for m in rows] == [m.record_key for m in one[4 * batch:4 * batch + 4]]
        assert [int(m.rng.integers(1 << 30)) for m in rows] == \
            [int(m.rng.integers(1 << 30)) for m in [stream[i] for i in range(4 * batch, 4 * batch + 4)]]


def _run(workdir, processes: int, steps: int = 4, extra=()):
    """`processes` x (4 / processes) CPU devices."""
    port = _free_port()
    _finish([_launch(workdir, devices=4 // processes, process_id=i, num_processes=processes, port=port,
                     steps=steps, extra=extra) for i in range(processes)])


def losses(workdir):
    return {r["step"]: r["loss"] for r in metrics_writer.read_metrics(str(workdir)) if "loss" in r}


def test_two_processes_train_like_one_and_resume_on_the_other_topology(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, processes=1)
    _run(two, processes=2)

    def evaluation(workdir):
        return [r["eval/J&F"] for r in metrics_writer.read_metrics(str(workdir)) if "eval/J&F" in r]

    assert sorted(losses(two)) == sorted(losses(one)) == [1, 2, 3, 4]  # one row per step: process 0 writes
    np.testing.assert_allclose([losses(two)[s] for s in range(1, 5)], [losses(one)[s] for s in range(1, 5)],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(evaluation(two), evaluation(one), atol=1e-6)
    params = [refsam_jax.load(str(w)).loaded.model.resizer.layers[0].kernel[...] for w in (one, two)]
    np.testing.assert_allclose(np.asarray(params[1]), np.asarray(params[0]), atol=1e-5)

    # Saved by 2 processes, resumed by 1, and the reverse: the continued losses are the uninterrupted ones.
    for first, then in ((2, 1), (1, 2)):
        workdir = tmp_path / f"{first}_then_{then}"
        _run(workdir, processes=first, steps=2)
        _run(workdir, processes=then, steps=4)
        assert sorted(losses(workdir)) == [1, 2, 3, 4]
        np.testing.assert_allclose([losses(workdir)[s] for s in (3, 4)], [losses(one)[s] for s in (3, 4)],
                                   rtol=1e-5, atol=1e-6)


def _evaluate(workdir, out, processes: int, *extra):
    """`python -m refsam_jax.evaluate` as `processes` processes of one CPU device each; their stdouts."""
    port = _free_port()
    launched = []
    for i in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(i))
        launched.append(_spawn([sys.executable, "-m", "refsam_jax.evaluate", f"--workdir={workdir}", f"--out={out}",
                                *extra], env))
    outputs = [_output(p, timeout=600) for p in launched]
    for p, (_, stderr) in zip(launched, outputs):
        assert p.returncode == 0, stderr[-4000:]
    return [stdout for stdout, _ in outputs]


def test_two_processes_evaluate_like_one(tmp_path):
    """Each process segments every other video; the gathered scores equal one process's, in its order."""
    workdir = tmp_path / "run"
    _run(workdir, processes=1, steps=2,  # 3 held-out videos
         extra=["--config.synthetic.num_videos=12", "--config.data.heldout_fraction=0.25"])
    davis = tmp_path / "davis"
    subprocess.run([sys.executable, "-m", "refsam_jax.data", "synthetic", "--layout", "ref_davis17",
                    "--root", str(davis), "--num_items", "3"], check=True, capture_output=True)
    for dataset, table, extra in (
            ("ytvos_heldout", "per_expression.csv", ["--dataset=ytvos_heldout", "--max_videos=3"]),
            ("davis", "per_object.csv", ["--dataset=davis", f"--data_dir={tmp_path / 'tfds'}",
                                         f"--manual_dir={davis}"])):
        one, two = tmp_path / f"{dataset}_one", tmp_path / f"{dataset}_two"
        printed_two = _evaluate(workdir, two, 2, *extra)  # First: process 0 builds the DAVIS dataset.
        printed_one = _evaluate(workdir, one, 1, *extra)
        assert "J&F" in printed_two[0] and "J&F" not in printed_two[1] and "J&F" in printed_one[0]  # process 0
        results = [json.loads((out / "results.json").read_text()) for out in (one, two)]
        for key in ("J", "F", "JF"):
            assert results[1][key] == results[0][key], (dataset, key)
        assert (two / table).read_text() == (one / table).read_text()
        assert len((one / table).read_text().splitlines()) > 2  # Several videos, so both processes had some.
        predictions = sorted(p.relative_to(one) for p in (one / "predictions").rglob("*.png"))
        assert predictions == sorted(p.relative_to(two) for p in (two / "predictions").rglob("*.png"))


def test_a_killed_process_stops_the_other_and_a_restart_resumes(tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    processes = [_launch(workdir, devices=2, process_id=i, num_processes=2, port=port, steps=10_000)
                 for i in range(2)]
    checkpoints = workdir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = _output(processes[0], timeout=120)  # JAX's heartbeat timeout (60 s here) bounds the wait.
    assert processes[0].returncode != 0 and time.monotonic() - killed < 90
    assert "stopped sending heartbeats" in stderr and "another task died" in stderr
    processes[1].wait()
    saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    _run(workdir, processes=2, steps=saved + 2)
    steps = [r["step"] for r in metrics_writer.read_metrics(str(workdir)) if "loss" in r]
    assert steps[-2:] == [saved + 1, saved + 2] and len(steps) == len(set(steps))
