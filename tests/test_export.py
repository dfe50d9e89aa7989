"""Export a trained run, move it, load it from another working directory and segment: the masks equal the
predict command's on the same video; bfloat16 storage agrees with float32."""

import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import refsam_jax
from refsam_jax import task
from refsam_jax.export import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")
SENTENCES = ["a red circle on the left", "the square moving up"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config = runpy.run_path(DEMO)["get_config"]()
    config.total_steps, config.log_every, config.progress_bar = 3, 1, False
    config.synthetic.num_videos, config.synthetic.num_frames = 8, 5
    config.data.batch_size, config.data.num_frames = 2, 2
    config.eval.at_start = config.eval.at_end = False
    task.train_and_evaluate(config, str(root / "run"))
    videos = root / "run" / "data" / "raw" / "train" / "JPEGImages"
    shutil.copytree(videos / sorted(os.listdir(videos))[0], root / "video")
    return root


def test_export_moves_and_loads_anywhere_with_the_predict_commands_masks(trained, tmp_path, monkeypatch):
    export(str(trained / "run"), str(tmp_path / "exported"))
    shutil.move(str(tmp_path / "exported"), str(tmp_path / "moved"))
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    seg = refsam_jax.load("../../moved")
    assert seg.loaded.step == 3
    one = seg.segment(str(trained / "video"), SENTENCES[0])
    both = seg.segment(str(trained / "video"), SENTENCES)
    frames = sorted(os.listdir(trained / "video"))
    height, width = np.asarray(Image.open(trained / "video" / frames[0])).shape[:2]
    assert one.shape == (len(frames), height, width) and one.dtype == bool
    assert both.shape == (2, len(frames), height, width)
    np.testing.assert_array_equal(both[0], one)
    array = np.stack([np.asarray(Image.open(trained / "video" / f).convert("RGB")) for f in frames])
    np.testing.assert_array_equal(seg.segment(array, SENTENCES), both)

    result = subprocess.run([sys.executable, "-m", "refsam_jax.predict", "--video", str(trained / "video"),
                             *[a for s in SENTENCES for a in ("--text", s)], "--checkpoint", str(trained / "run"),
                             "--out", str(tmp_path / "predicted"), "--nooverlay"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p for p in os.listdir(tmp_path / "predicted"))
    for e, folder in enumerate(folders):
        predicted = np.stack([np.asarray(Image.open(tmp_path / "predicted" / folder / f"{os.path.splitext(f)[0]}.png"))
                              for f in frames]) > 0
        np.testing.assert_array_equal(predicted, both[e])


def test_bfloat16_export_agrees_with_float32(trained, tmp_path):
    export(str(trained / "run"), str(tmp_path / "bf16"), dtype="bfloat16")
    full = refsam_jax.load(str(trained / "run")).segment(str(trained / "video"), SENTENCES, return_logits=True)
    half = refsam_jax.load(str(tmp_path / "bf16")).segment(str(trained / "video"), SENTENCES, return_logits=True)
    agreement = np.mean((full > 0) == (half > 0))
    print(f"bf16 vs fp32 export: pixel agreement {agreement:.5f}, max |logit diff| {np.abs(full - half).max():.4f}")
    assert agreement > 0.99
    computed = refsam_jax.load(str(trained / "run"), dtype="bfloat16").segment(str(trained / "video"), SENTENCES)
    iou = ((full > 0) & computed).sum() / max(((full > 0) | computed).sum(), 1)
    print(f"bf16 computation vs fp32: mask IoU {iou:.4f}")
    assert iou > 0.9
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export(str(trained / "run"), str(tmp_path / "bf16"))
