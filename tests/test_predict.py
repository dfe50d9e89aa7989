"""Predict CLI and its pieces: overlays, captions, the GIF/MP4 writer, mask files, errors, an untrained smoke run."""

import dataclasses
import os
import subprocess
import sys

import imageio.v2 as imageio
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from refsam_jax import inference, predict, visualize
from refsam_jax.configs.demo import MINILM
from refsam_jax.model.config import default_model_config
from refsam_jax.model.refsam import build_refsam
from refsam_jax.segmenter import Segmenter
from refsam_jax.text import TextEncoder, TextTokenizer, build_text_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overlay_tints_only_the_masks_and_outlines_them():
    frame = np.full((20, 30, 3), 100, np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 10:18, 12:28] = True
    out = visualize.overlay_masks(frame, masks)
    untouched = ~masks.any(0)
    np.testing.assert_array_equal(out[untouched], frame[untouched])
    assert tuple(out[2, 2]) == visualize.colour_of(0)  # boundary pixel: the colour itself
    inner = out[5, 5].astype(int)
    expected = (np.asarray(visualize.colour_of(0)) + 100) / 2
    np.testing.assert_allclose(inner, expected, atol=1)
    assert tuple(out[10, 12]) == visualize.colour_of(1)


def test_overlay_rejects_mismatched_masks():
    with pytest.raises(ValueError, match=r"\[E, H, W\]"):
        visualize.overlay_masks(np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 9), bool))


def test_captions_add_a_band_of_fixed_height_with_each_sentence_in_its_colour():
    frame = np.zeros((120, 160, 3), np.uint8)
    sentences = ["a red circle on the left", "the square moving to the right, a sentence long enough to wrap"]
    out = visualize.add_captions(frame, sentences)
    again = visualize.add_captions(np.full_like(frame, 50), sentences)
    assert out.shape == again.shape and out.shape[0] > 120 and out.shape[1:] == (160, 3)
    band = out[120:].reshape(-1, 3).astype(float)
    for e in range(2):  # Anti-aliased text on black: some pixels are at least half as bright as the colour.
        colour = np.asarray(visualize.colour_of(e), float)
        cosine = band @ colour / (np.linalg.norm(band, axis=1) * np.linalg.norm(colour) + 1e-9)
        bright = band.sum(axis=1) >= colour.sum() / 2
        assert (bright & (cosine > 0.995)).any(), f"no text pixel in the colour of caption {e}"


def test_enlarge_scales_small_frames_and_their_masks_together():
    frame = np.zeros((48, 64, 3), np.uint8)
    masks = np.zeros((2, 48, 64), bool)
    masks[0, 10:20, 5:15] = True
    big, big_masks = visualize.enlarge(frame, masks, 384)
    assert big.shape == (288, 384, 3) and big_masks.shape == (2, 288, 384)
    assert big_masks[0].sum() == masks[0].sum() * 36 and not big_masks[1].any()  # nearest: each pixel 6 x 6
    np.testing.assert_array_equal(big_masks[0, ::6, ::6], masks[0])
    large = np.zeros((400, 600, 3), np.uint8)
    assert visualize.enlarge(large, np.zeros((1, 400, 600), bool), 384)[0] is large  # large enough: unchanged


def test_comparison_strip_shows_truth_and_prediction_per_expression():
    frames = np.full((5, 30, 40, 3), 90, np.uint8)
    truth = np.zeros((2, 5, 30, 40), bool)
    truth[0, :, 5:15, 5:15] = True
    truth[1, :, 15:25, 20:35] = True
    predictions = np.zeros_like(truth)  # expression 0 predicted right, expression 1 missed
    predictions[0] = truth[0]
    strip = visualize.comparison_strip(frames, truth, predictions, ["first", "second"], max_frames=3,
                                       cell_long_side=80)
    assert strip.dtype == np.uint8 and strip.shape[1] == 4 * 12 + 3 * (80 + 2)  # labels (4 x 12-px font), 3 frames
    tinted = [(np.abs(strip.astype(int) - visualize.colour_of(e)).sum(-1) < 150) for e in range(2)]
    rows_0, rows_1 = np.nonzero(tinted[0].any(1))[0], np.nonzero(tinted[1].any(1))[0]
    assert rows_0.max() < rows_1.min()  # expression 0's rows (truth and prediction) come first
    # Expression 1's colour appears in its truth row only: the prediction row below it has none.
    cell_rows = np.nonzero(tinted[1][:, 4 * 12:].any(1))[0]
    assert cell_rows.max() - cell_rows.min() < 80
    with pytest.raises(ValueError, match="do not match"):
        visualize.comparison_strip(frames, truth, predictions[:, :4], ["a", "b"])


def test_writer_makes_a_gif_and_an_mp4(tmp_path):
    stem = str(tmp_path / "out" / "overlay")
    frames = [np.full((50, 71, 3), 20 * t, np.uint8) for t in range(5)]  # odd width: the MP4 pads it
    with visualize.OverlayWriter(stem, fps=5, gif_max_side=40) as writer:
        for frame in frames:
            writer.add(frame)
    assert writer.mp4_error is None
    assert writer.paths == [f"{stem}.gif", f"{stem}.mp4"]
    with Image.open(f"{stem}.gif") as gif:
        assert gif.n_frames == 5 and max(gif.size) == 40
    reader = imageio.get_reader(f"{stem}.mp4", format="ffmpeg")
    assert reader.count_frames() == 5
    reader.close()


def test_writer_rejects_frames_of_another_size(tmp_path):
    writer = visualize.OverlayWriter(str(tmp_path / "x"), mp4=False)
    writer.add(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="after frames of size"):
        writer.add(np.zeros((12, 10, 3), np.uint8))
    assert writer.close() == [str(tmp_path / "x.gif")] and os.path.exists(tmp_path / "x.gif")


def test_slug():
    assert predict.slug("A red circle, on the LEFT!") == "a-red-circle-on-the-left"
    assert predict.slug("???") == "expression"
    assert len(predict.slug("word " * 30)) <= 40


@pytest.fixture(scope="module")
def loaded():
    """A tiny untrained model and text encoder, as `inference.load_model` returns them."""
    hf_config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64, "type_vocab_size": 2,
                 "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    text_encoder = TextEncoder(build_text_encoder(hf_config, nnx.Rngs(0)), hf_config, TextTokenizer(MINILM, 12), "bert")
    config = default_model_config()
    config.sam.model_type = "tiny"
    config.text.width = 32
    config.text.max_length = 12
    model = build_refsam(config, seed=0)
    return inference.LoadedModel(model, text_encoder, config, 0, "tiny untrained")


def write_frames(folder, num_frames, height=36, width=52):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(num_frames):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(f"{folder}/{t * 5:05d}.jpg")


def test_predict_writes_masks_per_expression_and_an_overlay(tmp_path, loaded):
    write_frames(tmp_path / "video", 5)
    sentences = ["a red circle", "The square, moving right"]
    summary = predict.predict(str(tmp_path / "video"), sentences, str(tmp_path / "out"), loaded,
                              chunk_size=2, threshold=-1e9)  # Every pixel above the threshold: all-255 masks.
    assert summary["mask_dirs"] == [str(tmp_path / "out" / "0_a-red-circle"),
                                    str(tmp_path / "out" / "1_the-square-moving-right")]
    for folder in summary["mask_dirs"]:
        assert sorted(os.listdir(folder)) == [f"{t * 5:05d}.png" for t in range(5)]
        with Image.open(os.path.join(folder, "00010.png")) as mask:
            assert mask.mode == "L" and mask.size == (52, 36)
            assert set(np.unique(np.asarray(mask))) == {255}
    assert summary["foreground"] == [1.0, 1.0] and summary["frames"] == 5
    assert summary["overlay"] == [str(tmp_path / "out" / "overlay.gif"), str(tmp_path / "out" / "overlay.mp4")]
    with Image.open(tmp_path / "out" / "overlay.gif") as gif:
        # Enlarged to a 384-px long side (overlay_min_side), plus the caption band.
            assert gif.n_frames == 5 and gif.size[0] == 384 and gif.size[1] > round(36 * 384 / 52)


def test_predict_decodes_an_mp4_once(tmp_path, loaded, monkeypatch):
    frames = np.random.default_rng(1).integers(0, 256, (7, 32, 48, 3), dtype=np.uint8)
    imageio.mimwrite(tmp_path / "clip.mp4", list(frames), fps=5, macro_block_size=1)
    decoded = []
    read = inference.VideoFrames.__iter__
    monkeypatch.setattr(inference.VideoFrames, "__iter__", lambda self: decoded.append(1) or read(self))
    summary = predict.predict(str(tmp_path / "clip.mp4"), ["a circle", "the square"], str(tmp_path / "out"), loaded,
                              chunk_size=3)
    assert len(decoded) == 1 and summary["frames"] == 7
    with Image.open(tmp_path / "out" / "overlay.gif") as gif:
        assert gif.n_frames == 7


def test_predict_masks_follow_the_threshold(tmp_path, loaded):
    write_frames(tmp_path / "video", 2)
    summary = predict.predict(str(tmp_path / "video"), ["a circle"], str(tmp_path / "out"), loaded,
                              chunk_size=2, expression_batch=2, threshold=1e9, overlay=False)
    assert summary["foreground"] == [0.0] and summary["overlay"] == []
    with Image.open(os.path.join(summary["mask_dirs"][0], "00005.png")) as mask:
        assert set(np.unique(np.asarray(mask))) == {0}


def test_threshold_defaults_to_the_runs_eval_threshold(tmp_path, loaded):
    write_frames(tmp_path / "video", 2)
    run = dataclasses.replace(loaded, config=ml_collections.ConfigDict({"eval": {"threshold": -1e9}}))
    default = predict.predict(str(tmp_path / "video"), ["a circle"], str(tmp_path / "default"), run, chunk_size=2,
                              overlay=False)
    assert default["threshold"] == -1e9 and default["foreground"] == [1.0]
    explicit = predict.predict(str(tmp_path / "video"), ["a circle"], str(tmp_path / "explicit"), run, chunk_size=2,
                               threshold=1e9, overlay=False)  # An explicit threshold wins.
    assert explicit["threshold"] == 1e9 and explicit["foreground"] == [0.0]
    assert Segmenter(loaded, threshold=None).threshold == inference.DEFAULT_THRESHOLD  # A config without eval.


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "refsam_jax.predict", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_cli_errors_name_the_problem(tmp_path):
    missing = run_cli("--video", str(tmp_path / "nope.mp4"), "--text", "a cat", "--random-init", "--out", str(tmp_path))
    assert missing.returncode == 1 and "nope.mp4 does not exist" in missing.stderr
    os.makedirs(tmp_path / "empty")
    empty = run_cli("--video", str(tmp_path / "empty"), "--text", "a cat", "--random-init", "--out", str(tmp_path))
    assert empty.returncode == 1 and "no frames in" in empty.stderr
    blank = run_cli("--video", str(tmp_path / "empty"), "--text", " ", "--random-init", "--out", str(tmp_path))
    assert blank.returncode != 0 and "--text number 0 is empty" in blank.stderr
    both = run_cli("--video", str(tmp_path / "empty"), "--text", "a", "--out", str(tmp_path))
    assert both.returncode != 0 and "exactly one of --checkpoint and --random-init" in both.stderr


def test_cli_random_init_smoke_run(tmp_path):
    """The untrained demo model end to end through the command line, on an .mp4."""

    frames = [np.full((40, 64, 3), 30 * t, np.uint8) for t in range(3)]
    imageio.mimwrite(tmp_path / "clip.mp4", frames, fps=5, macro_block_size=1)
    result = run_cli("--video", str(tmp_path / "clip.mp4"), "--text", "a red circle", "--text", "the square",
                     "--random-init", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr and "3 frames in" in result.stdout and "os.fork" not in result.stderr
    assert "masks: logit > 0 (the run's eval.threshold)" in result.stdout  # No --threshold: the config's.
    assert sorted(os.listdir(tmp_path / "out")) == ["0_a-red-circle", "1_the-square", "overlay.gif", "overlay.mp4"]
    assert sorted(os.listdir(tmp_path / "out" / "1_the-square")) == ["00000.png", "00001.png", "00002.png"]
