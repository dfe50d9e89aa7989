"""RefSAM training end to end on the demo setting (tiny SAM, all-MiniLM-L6-v2, synthetic Ref-YouTube-VOS),
and the command line's handling of bad input."""

import os
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest

from refsam_jax import checkpoint as checkpoint_lib
from refsam_jax import task as task_lib
from refsam_jax.train import metrics_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def small_demo_config(**overrides):
    config = runpy.run_path(DEMO)["get_config"]()
    config.total_steps = 2
    config.log_every = 1
    config.progress_bar = False
    config.synthetic.num_videos = 8
    config.synthetic.num_frames = 4
    config.data.batch_size = 2
    config.data.num_frames = 2
    config.eval.at_start = False
    config.eval.max_expressions = 1
    config.text_cache = False
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.lock()
    return config


def test_refsam_trains_evaluates_and_rejects_a_checkpoint_of_another_model(tmp_path, monkeypatch):
    """Two steps from a converted SAM with the text encoder inside the step; then a resume with another model
    config fails before any compute."""
    from refsam_jax.sam.build import build_sam, save_sam
    from refsam_jax.sam.config import tiny_config

    sam = build_sam(config=tiny_config(), seed=7)
    save_sam(sam, str(tmp_path / "sam"))
    evaluate_heldout = task_lib.evaluate_heldout

    def check_weights_then_evaluate(model, text_encoder, config):
        """The frozen SAM weights in training are the converted checkpoint's; the adapters are the model's."""
        np.testing.assert_array_equal(model.sam.image_encoder.patch_embed.proj.kernel[...],
                                      sam.image_encoder.patch_embed.proj.kernel[...])
        np.testing.assert_array_equal(model.sam.prompt_encoder.no_mask_embed.embedding[...],
                                      sam.prompt_encoder.no_mask_embed.embedding[...])
        return evaluate_heldout(model, text_encoder, config)

    monkeypatch.setattr(task_lib, "evaluate_heldout", check_weights_then_evaluate)
    tiny = {"model.sam.model_type": "tiny", "data.image_size": 64}  # the checkpoint's architecture
    summary = task_lib.train_and_evaluate(small_demo_config(**{"model.sam.checkpoint": str(tmp_path / "sam"),
                                                               "data.max_text_length": 5, **tiny}),
                                          str(tmp_path / "run"))
    assert sorted(summary.losses) == [1, 2] and all(np.isfinite(list(summary.losses.values())))
    assert summary.compilations == 1
    assert 0.0 <= summary.evaluations[2]["J&F"] <= 1.0 and summary.evaluations[2]["expressions"] == 1
    records = metrics_writer.read_metrics(str(tmp_path / "run"))
    groups = {"adapter", "mlp", "dense", "mask_decoder", "tracking"}
    assert {f"grad_norm/{g}" for g in groups} | {f"lr/{g}" for g in groups} <= set(records[0])
    assert all(records[0][f"grad_norm/{g}"] > 0 for g in groups - {"adapter"})
    # 5 tokens: [CLS] + 3 words + [SEP]; the demo's sentences are longer: counted, not cut silently.
    assert records[-2]["text/truncated_fraction"] > 0 and summary.evaluations[2]["truncated_expressions"] == 1
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")

    other = small_demo_config(**{"total_steps": 3, "model.sam.checkpoint": str(tmp_path / "sam"),
                                 "data.max_text_length": 5, "model.mlp.hidden_layers": 2, **tiny})
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match="mlp.hidden_layers: 1 in the checkpoint, 2 now"):
        task_lib.train_and_evaluate(other, str(tmp_path / "run"))


def test_text_feature_cache_encodes_each_sentence_once():
    from refsam_jax.model.refsam import encode_text
    from refsam_jax.text import load_text_encoder

    config = small_demo_config()
    encoder = load_text_encoder(config.model.text.encoder, config.model.text.max_length)
    cache = task_lib.TextFeatureCache(encoder, text_attention_mask=True)
    ids, mask = encoder.tokenizer(["a red circle on the left", "the square moving up", "a red circle on the left"])
    features, feature_mask = cache(ids, mask)
    assert len(cache) == 2
    expected, expected_mask = encode_text(encoder, ids, mask, text_attention_mask=True)
    np.testing.assert_allclose(features, expected, atol=1e-6)
    np.testing.assert_array_equal(feature_mask, expected_mask)
    again, _ = cache(ids[::-1], mask[::-1])
    np.testing.assert_array_equal(again, features[::-1])
    assert len(cache) == 2


def test_several_sentences_per_clip_train_as_one_sentence_each(tmp_path):
    """K=2 sentences per clip: the loss is the mean of the valid sentences' losses, each on its own copy of the
    clip (text encoder inside the step); and a run trains end to end (with the text cache)."""
    config = small_demo_config(**{"data.expressions_per_clip": 2})
    task = task_lib.RefSamTask(config, str(tmp_path / "run"))
    text = task.load_other_frozen()["text"]
    batch = next(task.train_iterator(0, 1))
    assert batch["masks"].shape[:2] == (2, 2)
    batch["expression_valid"][1, 1] = False  # as a video with one sentence pads
    model = task.build_model()
    loss, _ = task.loss_fn(model, task.prepare_batch(batch), text)
    clip, sentence = np.nonzero(batch["expression_valid"])
    single = {"frames": batch["frames"][clip], "image_size": batch["image_size"][clip],
              **{key: batch[key][clip, sentence] for key in ("masks", "input_ids", "text_mask", "text_truncated")}}
    expected, _ = task.loss_fn(model, task.prepare_batch(single), text)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)

    cached = small_demo_config(**{"data.expressions_per_clip": 2, "text_cache": True})
    summary = task_lib.train_and_evaluate(cached, str(tmp_path / "cached"))
    assert sorted(summary.losses) == [1, 2] and all(np.isfinite(list(summary.losses.values())))


def _train_cli(workdir, *overrides):
    command = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={DEMO}", f"--workdir={workdir}", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_command_line_rejects_bad_input_before_any_compute(tmp_path):
    result = _train_cli(tmp_path / "typo", "--config.optim.lr.mpl=1e-6")
    assert result.returncode == 2
    assert "unknown config key --config.optim.lr.mpl: config.optim.lr has no key 'mpl'; did you mean 'mlp'?" in \
        result.stderr

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _train_cli(blocker / "workdir")
    assert result.returncode == 1 and "is not writable" in result.stderr

    result = _train_cli(tmp_path / "rules", "--config.trainable=((r'^resizer\\.', 'mlp'), (r'^densee\\.', 'dense'))")
    assert result.returncode == 1
    assert "trainable rule(s) [('^densee\\\\.', 'dense')] match no parameter of RefSAM" in result.stderr
    assert not os.path.exists(tmp_path / "rules" / "data")  # Nothing written, nothing computed.


def test_relative_workdir_killed_then_resumed_from_another_directory(tmp_path):
    """`--workdir runs/r` from one folder, killed with SIGKILL after a checkpoint; the same run named by
    another relative path from another folder resumes from that checkpoint."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    small = ["--config.synthetic.num_videos=8", "--config.synthetic.num_frames=4", "--config.data.batch_size=2",
             "--config.data.num_frames=2", "--config.log_every=1", "--config.checkpoint_every=2",
             "--config.eval.at_start=False", "--config.eval.at_end=False", "--config.progress_bar=False"]

    def command(cwd, workdir, steps):
        return [sys.executable, os.path.relpath(os.path.join(ROOT, "train.py"), cwd),
                f"--config={os.path.relpath(DEMO, cwd)}", f"--workdir={workdir}", f"--config.total_steps={steps}",
                *small]

    checkpoints = first / "runs" / "r" / "checkpoints"
    process = subprocess.Popen(command(first, "runs/r", 10_000), cwd=first, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.5)
    finally:
        process.kill()
        process.wait()
    saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    resumed = subprocess.run(command(second, "../first/runs/r", saved + 2), cwd=second, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints}/{saved}" in resumed.stderr
    steps = [record["step"] for record in metrics_writer.read_metrics(str(first / "runs" / "r"))]
    assert steps[-2:] == [saved + 1, saved + 2]
    assert not os.path.exists(second / "runs") and os.path.isdir(checkpoints / str(saved + 2))


def test_model_switches_by_override_train_what_they_build(tmp_path):
    """Switches set after get_config (as --config.* overrides do) change the model, and the trainable groups
    follow: LoRA trains, and there are no tracking, adapter or dense parameters once they are switched off."""
    from refsam_jax.model.refsam import build_refsam

    config = small_demo_config(**{"model.lora.rank": 2, "model.tracking.enabled": False,
                                  "model.adapter.placement": "none", "model.dense.mode": "origin",
                                  "model.mlp.hidden_layers": 0})
    summary = task_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert sorted(summary.losses) == [1, 2]
    meta = checkpoint_lib.TrainCheckpointer(str(tmp_path / "run" / "checkpoints"), max_to_keep=1).read_meta(2)
    trained = set(meta["trainable_shapes"])
    assert any(".attn.proj.w_a." in p for p in trained) and any(".attn.proj.w_b." in p for p in trained)
    assert not any(p.startswith(("tracking.", "dense.")) or "Adapter" in p for p in trained)
    assert {p for p in trained if p.startswith("resizer.")} == {"resizer.layers.0.kernel", "resizer.layers.0.bias"}
    model = build_refsam(task_lib.model_config_without_weights(config), seed=config.seed)
    assert model.tracking is None
    w_b = model.sam.image_encoder.blocks[0].attn.proj.w_b.kernel[...]
    assert not w_b.any()  # LoRA's w_b starts at zero ...
    checkpoint_lib.load_trained_params(model, str(tmp_path / "run" / "checkpoints"), config.model.to_dict())
    assert model.sam.image_encoder.blocks[0].attn.proj.w_b.kernel[...].any()  # ... and has moved.


def test_a_built_module_that_no_rule_trains_is_an_error(tmp_path):
    config = small_demo_config(**{"model.lora.rank": 2})
    with config.unlocked():
        config.trainable = ((r"^resizer\.", "mlp"), (r"^dense\.", "dense"), (r"^tracking\.", "tracking"),
                            (r"Adapter\.", "adapter"), (r"^sam\.mask_decoder\.", "mask_decoder"))
    with pytest.raises(ValueError, match=r"would stay frozen .* sam\.image_encoder\.blocks\.0\.attn\.proj\.w_a"):
        task_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_faithful_preset_trains_and_evaluates(tmp_path):
    faithful = runpy.run_path(DEMO)["get_config"]("faithful")
    assert not faithful.model.text_attention_mask and not faithful.model.adapter.zero_init
    assert faithful.data.augment.per_frame and faithful.eval.threshold == 0.01
    assert faithful.data.max_crop_size == 512 and faithful.eval.short_side == 360
    assert faithful.model.text.padding == "longest" and faithful.model.hda.dense_conv == "separate"
    assert faithful.eval.davis_shared_track and not faithful.model.hda.level_norm
    assert "adapter" not in {group for _, group in faithful.trainable}
    config = small_demo_config(**{"model.text_attention_mask": False, "model.adapter.zero_init": False,
                                  "data.augment.per_frame": True, "eval.threshold": 0.01,
                                  "data.max_crop_size": 32, "eval.short_side": 40, "model.text.padding": "longest",
                                  "model.dense.tokens": "sentence", "model.tracking.qim_previous": False})
    with config.unlocked():
        config.trainable, config.frozen_on_purpose = faithful.trainable, faithful.frozen_on_purpose
    summary = task_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert sorted(summary.losses) == [1, 2] and 0.0 <= summary.evaluations[2]["J&F"] <= 1.0
    meta = checkpoint_lib.TrainCheckpointer(str(tmp_path / "run" / "checkpoints"), max_to_keep=1).read_meta(2)
    assert not any("Adapter" in p for p in meta["trainable_shapes"])
