"""A shortened demo end to end (synthetic data -> a few training steps -> held-out J&F -> overlay), then the
evaluate command line on its workdir."""

import json
import os
import subprocess
import sys

import pytest

from refsam_jax.evaluation.ref_ytvos import evaluate_ytvos_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--config.total_steps=3", "--config.checkpoint_every=3", "--config.log_every=1",
         "--config.progress_bar=False", "--config.synthetic.num_videos=8", "--config.synthetic.num_frames=4",
         "--config.data.batch_size=2"]


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_short_demo_then_evaluate_from_the_workdir(tmp_path):
    workdir = tmp_path / "demo"
    demo = run("demo.py", "--workdir", str(workdir), *SHORT)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "untrained (initialisation)" in demo.stdout and "trained (3 steps)" in demo.stdout
    assert "total wall time" in demo.stdout

    results = {}
    for step in (0, 3):
        with open(workdir / "eval" / "ytvos_heldout" / f"step_{step}" / "results.json") as f:
            results[step] = json.load(f)
        assert 0.0 <= results[step]["JF"] <= 1.0 and results[step]["num_videos"] == 1
        assert f"J&F {results[step]['JF']:.3f}" in demo.stdout
    assert os.path.getsize(workdir / "overlay" / "overlay.gif") > 0

    # The masks written are the masks scored: the file-based local evaluator gives the same numbers.
    predictions = workdir / "eval" / "ytvos_heldout" / "step_3" / "predictions"
    rescored = evaluate_ytvos_local(str(predictions), str(workdir / "data" / "raw")).summary()
    assert rescored["JF"] == pytest.approx(results[3]["JF"], abs=1e-9)
    assert rescored["num_expressions"] == results[3]["num_expressions"]

    # The evaluate command line loads the latest checkpoint of the workdir and finds the same J&F.
    cli = run("-m", "refsam_jax.evaluate", "--workdir", str(workdir), "--config", "configs/demo.py",
              "--out", str(tmp_path / "eval"))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"J&F {results[3]['JF']:.4f}" in cli.stdout and "checkpoints/3" in cli.stdout
