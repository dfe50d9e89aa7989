"""The model-agnostic training machinery on a toy video model: sharding parity, frozen state, optimizer
memory, resumption, compilation count and bad input.

The toy model has a frozen conv encoder and a frozen buffer, two trainable groups ('head': a conv and a
text projection; 'tracking': a recurrent linear layer) and scans over the frames of a clip carrying a
track vector, so gradients flow back through time as in RefSAM.
"""

import json
import os
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from refsam_jax import checkpoint as checkpoint_lib
from refsam_jax import param_rules
from refsam_jax.sam.common import Buffer
from refsam_jax.train import loop, losses, metrics_writer, sweep
from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.train import step as step_lib
from refsam_jax.trees import cast_floating

TEXT_WIDTH, TEXT_LENGTH = 4, 5
TOY_RULES = ((r"^(head|text_proj)\.", "head"), (r"^tracking", "tracking"))


class ToyTracker(nnx.Module):
    """frames [B, T, S, S, 3], text [B, L, C] -> logits [B, T, S/2, S/2]."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.encoder = nnx.Conv(3, width, (3, 3), rngs=rngs)
        self.feature_scale = Buffer(jnp.full((width,), 0.5))
        self.head = nnx.Conv(width, width, (1, 1), rngs=rngs)
        self.text_proj = nnx.Linear(TEXT_WIDTH, width, rngs=rngs)
        self.tracking = nnx.Linear(width, width, rngs=rngs)
        self.tracking_gate = nnx.Param(jnp.full((1,), 0.5))  # Weakly typed, as RefSAM's HDA weight.
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, frames, text_features, text_mask):
        batch, clip, size = frames.shape[:3]
        features = self.encoder(frames.reshape((batch * clip, size, size, 3))) * self.feature_scale
        features = nnx.avg_pool(features, (2, 2), strides=(2, 2)).reshape((batch, clip, size // 2, size // 2, -1))
        mask = text_mask[..., None].astype(features.dtype)
        sentence = jnp.sum(self.text_proj(text_features) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)

        def frame_step(track, frame_features):
            hidden = jax.nn.relu(self.head(frame_features) + (sentence + track)[:, None, None, :])
            new_track = jnp.tanh(self.tracking(jnp.mean(hidden, axis=(1, 2)) + track)) * self.tracking_gate[...]
            return new_track, self.out(hidden)[..., 0]

        _, logits = jax.lax.scan(frame_step, jnp.zeros_like(sentence), jnp.swapaxes(features, 0, 1))
        return jnp.swapaxes(logits, 0, 1)


class ToyClips:
    """Random clips whose mask is where the red channel exceeds the blue one, inside the valid region."""

    def __init__(self, size: int, frames: int, count: int = 64):
        self.size, self.frames, self.count = size, frames, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        frames = rng.uniform(-1, 1, (self.frames, self.size, self.size, 3)).astype(np.float32)
        image_size = np.stack([rng.integers(self.size // 2, self.size + 1, 2)] * self.frames).astype(np.int32)
        pixels = np.arange(self.size)
        valid = (pixels[:, None] < image_size[0, 0]) & (pixels[None, :] < image_size[0, 1])
        frames = frames * valid[..., None]
        masks = ((frames[..., 0] > frames[..., 2]) & valid).astype(np.float32)
        text_mask = np.arange(TEXT_LENGTH) < rng.integers(1, TEXT_LENGTH + 1)
        text = rng.normal(size=(TEXT_LENGTH, TEXT_WIDTH)).astype(np.float32) * text_mask[:, None]
        return {"frames": frames, "masks": masks, "image_size": image_size, "text_features": text,
                "text_mask": text_mask}


class Interrupted(Exception):
    pass


def toy_config(**overrides) -> ml_collections.ConfigDict:
    config = loop.base_config()
    config.total_steps = 3
    config.log_every = 1
    config.checkpoint_every = 100
    config.progress_bar = False
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.sharding.fsdp_min_size = 16
    config.trainable = TOY_RULES
    config.optim.lr = ml_collections.ConfigDict({"head": 3e-2, "tracking": 1e-2})
    config.optim.weight_decay = ml_collections.ConfigDict({"head": 0.01, "tracking": 0.0})
    config.optim.clip_grad_norm = 1.0
    config.toy = ml_collections.ConfigDict({"width": 8, "size": 16, "frames": 3, "batch": 8, "interrupt_after": -1})
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


TRACES = []
PRETRAINED_LOADS = []


class ToyTask(loop.Task):
    def __init__(self, config, workdir):
        self.config, self.toy = config, config.toy
        self.model_config = {"width": self.toy.width}
        self.global_batch_size, self.frames_per_clip = self.toy.batch, self.toy.frames
        self.batches_seen = 0

    def build_model(self):
        return ToyTracker(self.toy.width, nnx.Rngs(self.config.seed))

    def loss_fn(self, model, batch):
        TRACES.append(1)
        logits = model(batch["frames"], batch["text_features"], batch["text_mask"])
        return losses.refsam_loss(logits, batch["masks"], batch["image_size"])

    def train_iterator(self, shard_index, shard_count, first_step=0):
        toy = self.toy
        dataset = (grain.MapDataset.source(ToyClips(toy.size, toy.frames)).shuffle(seed=self.config.seed).repeat()
                   [shard_index::shard_count].batch(toy.batch // shard_count, drop_remainder=True))
        return iter(dataset.to_iter_dataset())

    def prepare_batch(self, batch):
        self.batches_seen += 1
        if self.toy.interrupt_after >= 0 and self.batches_seen > self.toy.interrupt_after:
            raise Interrupted(f"stopped before batch {self.batches_seen}")
        return batch

    def load_pretrained(self, model):
        """Stands for a converted backbone: frozen values the run's checkpoints do not hold."""
        PRETRAINED_LOADS.append(1)
        model.feature_scale[...] = jnp.linspace(0.5, 1.5, self.toy.width)

    def evaluate(self, model):
        clips = ToyClips(self.toy.size, self.toy.frames, count=1004)
        batch = {k: np.stack([clips[i][k] for i in range(1000, 1004)]) for k in clips[0]}
        logits = model(batch["frames"], batch["text_features"], batch["text_mask"])
        return {"loss": float(losses.refsam_loss(logits, batch["masks"], batch["image_size"])[0])}


RUN_OVERRIDES = {"total_steps": 5, "checkpoint_every": 1, "optim.schedule": "warmup_cosine",
                 "optim.warmup_steps": 2, "eval.at_start": True}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 5-step run on 1 device, and the same run on a simulated 4x2 mesh in a subprocess."""
    root = tmp_path_factory.mktemp("reference")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax
        import test_train_loop as t
        from refsam_jax.train import loop
        assert jax.device_count() == 8
        config = t.toy_config(**dict(t.RUN_OVERRIDES, checkpoint_every=100, **{{"mesh.data": 4, "mesh.fsdp": 2}}))
        summary = loop.train(config, {str(root / "eight")!r}, t.ToyTask)
        print("LOSSES", json.dumps(summary.losses))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    eight_devices = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    TRACES.clear()
    summary = loop.train(toy_config(**RUN_OVERRIDES), str(root / "one"), ToyTask)
    traces = len(TRACES)
    stdout, stderr = eight_devices.communicate(timeout=600)
    return {"workdir": root / "one", "summary": summary, "traces": traces,
            "eight": (eight_devices.returncode, stdout, stderr)}


def test_eight_device_mesh_matches_one_device(reference_run):
    """Steps on a simulated 4x2 (data x fsdp) CPU mesh, with FSDP-sharded weights, give the 1-device losses."""
    returncode, stdout, stderr = reference_run["eight"]
    assert returncode == 0, stderr[-3000:]
    eight = {int(k): v for k, v in json.loads(stdout.split("LOSSES", 1)[1]).items()}
    one = reference_run["summary"].losses
    assert sorted(eight) == sorted(one) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=0, atol=1e-5)


def _toy_split(config):
    model = ToyTracker(config.toy.width, nnx.Rngs(0))
    return optimizer_lib.split_trainable(model, config.trainable)


def test_step_trains_groups_and_leaves_frozen_state_bit_identical():
    config = toy_config()
    split = _toy_split(config)
    optimizer, _ = optimizer_lib.make_optimizer(config.optim, split.labels, config.total_steps)
    frozen = {"model": split.frozen}
    frozen_before = jax.tree.map(np.array, frozen)
    trainable_before = jax.tree.map(np.array, split.trainable)
    train_step = jax.jit(step_lib.make_train_step(split.graphdef, split.labels, optimizer,
                                                  ToyTask(config, None).loss_fn), donate_argnums=(0, 2))
    batch = {k: jnp.asarray(v) for k, v in next(ToyTask(config, None).train_iterator(0, 1)).items()}
    trainable, opt_state = split.trainable, optimizer.init(split.trainable)
    opt_bytes, trainable_bytes = optimizer_lib.tree_bytes(opt_state), optimizer_lib.tree_bytes(trainable)
    for _ in range(3):
        trainable, opt_state, metrics = train_step(trainable, frozen, opt_state, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, frozen), frozen_before)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), trainable, trainable_before)
    assert all(jax.tree.leaves(changed))
    assert set(metrics) >= {"loss", "dice", "focal", "grad_norm/all", "grad_norm/head", "grad_norm/tracking"}
    assert float(metrics["grad_norm/tracking"]) > 0  # Gradients reach the recurrent layer through the scan.
    frozen_paths = {param_rules.path_to_str(p) for p, _ in nnx.to_flat_state(split.frozen)}
    assert frozen_paths == {"encoder.kernel", "encoder.bias", "feature_scale", "out.kernel", "out.bias"}
    assert opt_bytes <= 2.1 * trainable_bytes, (opt_bytes, trainable_bytes)


def test_bfloat16_compute_keeps_float32_master_weights():
    config = toy_config()
    split = _toy_split(config)
    optimizer, _ = optimizer_lib.make_optimizer(config.optim, split.labels, config.total_steps)
    batch = {k: jnp.asarray(v) for k, v in next(ToyTask(config, None).train_iterator(0, 1)).items()}
    losses_by_dtype = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        train_step = jax.jit(step_lib.make_train_step(split.graphdef, split.labels, optimizer,
                                                      ToyTask(config, None).loss_fn, compute_dtype=dtype))
        frozen = cast_floating({"model": split.frozen}, dtype)
        trainable, _, metrics = train_step(split.trainable, frozen, optimizer.init(split.trainable), batch)
        assert {leaf.dtype for leaf in jax.tree.leaves(trainable)} == {jnp.dtype(jnp.float32)}
        losses_by_dtype[dtype] = float(metrics["loss"])
    assert losses_by_dtype[jnp.bfloat16] != losses_by_dtype[jnp.float32]
    np.testing.assert_allclose(losses_by_dtype[jnp.bfloat16], losses_by_dtype[jnp.float32], rtol=2e-2)


def test_stop_and_resume_gives_the_uninterrupted_losses(reference_run, tmp_path):
    with pytest.raises(Interrupted):
        loop.train(toy_config(**RUN_OVERRIDES, **{"toy.interrupt_after": 2}), str(tmp_path), ToyTask)
    resumed = loop.train(toy_config(**RUN_OVERRIDES), str(tmp_path), ToyTask)
    assert resumed.resumed_from == 2
    assert sorted(resumed.losses) == [3, 4, 5]
    uninterrupted = reference_run["summary"].losses
    np.testing.assert_allclose([resumed.losses[s] for s in (3, 4, 5)], [uninterrupted[s] for s in (3, 4, 5)],
                               rtol=0, atol=1e-6)


def test_metrics_are_logged(reference_run):
    all_records = metrics_writer.read_metrics(str(reference_run["workdir"]))
    records = [r for r in all_records if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert {"loss", "dice", "focal", "lr/head", "lr/tracking", "grad_norm/all", "grad_norm/head",
            "grad_norm/tracking"} <= set(records[0])
    assert "clips_per_s" not in records[0]  # The first step compiles: it is not timed.
    assert records[1]["clips_per_s"] > 0 and records[1]["frames_per_s"] == pytest.approx(3 * records[1]["clips_per_s"])
    assert records[0]["lr/head"] == 0.0 and records[2]["lr/head"] == pytest.approx(3e-2)
    assert os.listdir(reference_run["workdir"] / "tensorboard")
    evaluations = [r for r in all_records if "eval/loss" in r]
    assert [r["step"] for r in evaluations] == [0, 5]
    assert sorted(reference_run["summary"].evaluations) == [0, 5]


def test_no_recompilation_after_the_first_step(reference_run):
    assert reference_run["summary"].compilations == 1
    assert reference_run["traces"] == 1


def test_nan_loss_stops_with_the_step_number(tmp_path):
    config = toy_config(total_steps=3)
    config.optim.lr.head = float("nan")
    with pytest.raises(FloatingPointError, match="at step 2"):
        loop.train(config, str(tmp_path), ToyTask)


def test_exploding_weights_are_never_checkpointed(tmp_path):
    config = toy_config(total_steps=3, checkpoint_every=1, **{"optim.clip_grad_norm": 0.0})
    config.optim.lr.head = 1e39  # inf in float32: the weights are not finite after the first update.
    with pytest.raises(FloatingPointError, match="not finite after step 1: training stopped without saving"):
        loop.train(config, str(tmp_path), ToyTask)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_metrics_keep_one_row_per_step_after_a_resume(tmp_path):
    writer = metrics_writer.MetricsWriter(str(tmp_path))
    writer.write_scalars(0, {"eval/J&F": 0.1})
    for step in range(1, 6):
        writer.write_scalars(step, {"loss": float(step)})
    writer.write_scalars(3, {"eval/J&F": 0.2})
    writer.close()
    metrics_writer.MetricsWriter(str(tmp_path), resumed_from=3).close()  # resumed from the checkpoint at 3
    assert [(r["step"], sorted(r)) for r in metrics_writer.read_metrics(str(tmp_path))] == [
        (0, ["eval/J&F", "step"]), (1, ["loss", "step"]), (2, ["loss", "step"]), (3, ["loss", "step"])]
    metrics_writer.MetricsWriter(str(tmp_path)).close()  # a fresh run in the same workdir
    assert metrics_writer.read_metrics(str(tmp_path)) == []


def test_bad_input_fails_before_any_compute(reference_run, tmp_path):
    PRETRAINED_LOADS.clear()
    config = toy_config(trainable=TOY_RULES + ((r"^decoder\\.", "decoder"),))
    with pytest.raises(ValueError, match=r"decoder.*match no parameter"):
        loop.train(config, str(tmp_path / "rules"), ToyTask)

    config = toy_config()
    del config.optim.lr["tracking"]
    with pytest.raises(ValueError, match=r"\['tracking'\] have no entry in optim.lr"):
        loop.train(config, str(tmp_path / "lr"), ToyTask)

    saved_config = (reference_run["workdir"] / "config.json").read_text()
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="width: 8 in the checkpoint, 16 now"):
        loop.train(toy_config(**RUN_OVERRIDES, **{"toy.width": 16}), str(reference_run["workdir"]), ToyTask)
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=r"optimizer state was saved with other settings: config.optim.accumulate_steps "
                             r"\(1 in the checkpoint, 2 now\)"):
        loop.train(toy_config(**RUN_OVERRIDES, **{"optim.accumulate_steps": 2}), str(reference_run["workdir"]),
                   ToyTask)
    assert (reference_run["workdir"] / "config.json").read_text() == saved_config  # The rejected runs wrote nothing.

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="is not writable"):
        loop.train(toy_config(), str(blocker / "workdir"), ToyTask)

    with pytest.raises(ValueError, match="1 devices are not divisible by 2"):
        loop.train(toy_config(**{"mesh.fsdp": 2}), str(tmp_path / "mesh"), ToyTask)
    assert not PRETRAINED_LOADS


def test_init_from_another_run_loads_its_trained_params(reference_run):
    checkpoints = str(reference_run["workdir"] / "checkpoints")
    model = ToyTracker(8, nnx.Rngs(0))
    assert checkpoint_lib.load_trained_params(model, checkpoints, {"width": 8}) == 5
    fresh = ToyTracker(8, nnx.Rngs(0))
    assert not np.allclose(model.head.kernel[...], fresh.head.kernel[...])
    np.testing.assert_array_equal(model.encoder.kernel[...], fresh.encoder.kernel[...])
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="another model config"):
        checkpoint_lib.load_trained_params(model, checkpoints, {"width": 16})


def test_sweep_runs_the_grid_and_tabulates_final_losses(tmp_path):
    config = toy_config()
    config.lock()
    grid = sweep.parse_grid(config, ["optim.lr.head=1e-2,1e-1", "optim.clip_grad_norm=1,0"])
    assert grid == [("optim.lr.head", [1e-2, 1e-1]), ("optim.clip_grad_norm", [1.0, 0.0])]
    seen = []

    def fake_train(run_config, workdir):
        """Logs losses that depend on the swept values, as a training run would."""
        seen.append((run_config.optim.lr.head, run_config.optim.clip_grad_norm, run_config.total_steps))
        writer = metrics_writer.MetricsWriter(workdir)
        for step in range(1, 5):
            writer.write_scalars(step, {"loss": run_config.optim.lr.head * step + run_config.optim.clip_grad_norm})
        writer.close()
        return loop.TrainSummary(step=4, losses={}, compilations=1, resumed_from=None,
                                 evaluations={4: {"J&F": 0.5}})

    rows = sweep.run_sweep(config, str(tmp_path), grid, steps=4, average_last=2, train_fn=fake_train)
    assert seen == [(1e-2, 1.0, 4), (1e-2, 0.0, 4), (1e-1, 1.0, 4), (1e-1, 0.0, 4)]
    assert [row["final_loss"] for row in rows] == pytest.approx([1.035, 0.035, 1.35, 0.35])
    assert rows[0]["eval/J&F"] == 0.5
    assert os.path.isdir(tmp_path / "head=0.01+optim.clip_grad_norm=1")
    table = sweep.format_table(rows).splitlines()
    assert table[0].split() == ["optim.lr.head", "optim.clip_grad_norm", "final_loss", "eval/J&F"]
    assert len(table) == 5
    sweep.write_csv(rows, str(tmp_path / "sweep.csv"))
    assert (tmp_path / "sweep.csv").read_text().splitlines()[0] == \
        "optim.lr.head,optim.clip_grad_norm,final_loss,eval/J&F"
    with pytest.raises(ValueError, match="do not also give --steps"):
        sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(config, ["total_steps=3"]), steps=4,
                        train_fn=fake_train)
    with pytest.raises(KeyError, match="optim.lr has no key 'hed'"):
        sweep.parse_grid(config, ["optim.lr.hed=1"])
    with pytest.raises(ValueError, match="expected 'key=value1,value2"):
        sweep.parse_grid(config, ["optim.lr.head"])


def test_ablation_presets_name_real_keys_and_write_table_and_plot(tmp_path):
    from refsam_jax.configs import ablations
    from refsam_jax.configs.demo import get_config

    config = get_config()
    for preset, make_arms in ablations.PRESETS.items():
        arms = make_arms(config)
        assert len({name for name, _ in arms}) == len(arms) > 1, preset
        for _, assignment in arms:
            for key, value in assignment:
                assert type(sweep.get_key(config, key)) is type(value), (preset, key)
    arms = ablations.components(config)
    assert [name for name, _ in arms] == ["MLP", "DA", "HDA", "MLP+DA", "MLP+HDA", "MLP+HDA-ITM", "MLP+HDA-adapters"]

    def fake_train(run_config, workdir):
        writer = metrics_writer.MetricsWriter(workdir)
        writer.write_scalars(1, {"loss": 1.0 if run_config.model.tracking.enabled else 2.0})
        writer.close()
        jf = {"none": 0.3, "da": 0.4, "hda": 0.5}[run_config.model.dense.mode]
        return loop.TrainSummary(step=1, losses={}, compilations=1, resumed_from=None,
                                 evaluations={1: {"J&F": jf}}, trainable_params=7)

    rows = sweep.run_arms(config, str(tmp_path), arms, steps=1, train_fn=fake_train)
    assert [row["arm"] for row in rows] == [name for name, _ in arms]
    assert [row["eval/J&F"] for row in rows] == [0.3, 0.4, 0.5, 0.4, 0.5, 0.5, 0.5]
    assert rows[5]["final_loss"] == 2.0 and rows[5]["trainable_params"] == 7
    sweep.write_markdown(rows, str(tmp_path / "sweep.md"))
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| arm | model.sparse.use_words | model.dense.mode |") and len(table) == 2 + len(rows)
    sweep.plot_rows(rows, [name for name, _ in arms], str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_save_cut_short_resumes_from_the_last_complete_checkpoint(reference_run, tmp_path):
    """What kill -9 during a checkpoint save leaves (the step's folder still orbax's temporary one, its metrics
    row written) resumes from the previous checkpoint with the uninterrupted losses, one row per step."""
    loop.train(toy_config(**RUN_OVERRIDES), str(tmp_path), ToyTask)
    checkpoints = tmp_path / "checkpoints"
    os.rename(checkpoints / "5", checkpoints / "5.orbax-checkpoint-tmp-1764614400")
    resumed = loop.train(toy_config(**RUN_OVERRIDES), str(tmp_path), ToyTask)
    assert resumed.resumed_from == 4 and sorted(resumed.losses) == [5]
    assert resumed.losses[5] == reference_run["summary"].losses[5]  # bit-identical
    steps = [r["step"] for r in metrics_writer.read_metrics(str(tmp_path)) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
