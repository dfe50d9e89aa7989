"""Bad input: each case of docs/errors.md gives its one-line message and leaves nothing worse than it was."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refsam_jax import inference, paths
from refsam_jax.data.builders.common import DataError, read_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def test_frames_named_without_zero_padding_stay_in_time_order(tmp_path):
    names = ["0", "3", "6", "11", "21", "31"]
    for name in names:
        Image.fromarray(np.full((4, 4, 3), int(name), np.uint8)).save(tmp_path / f"{name}.jpg")
    assert inference.open_video(str(tmp_path)).names == names
    assert sorted(["frame_10.jpg", "frame_2.jpg", "frame_1.jpg"], key=paths.natural_key) == \
        ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]


def test_a_utf16_expressions_file_is_named(tmp_path):
    path = tmp_path / "meta_expressions.json"
    path.write_text('{"videos": {}}', encoding="utf-16")
    with pytest.raises(DataError, match=f"{path}: not UTF-8 text .* save it as UTF-8"):
        read_json(path)
    path.write_text('{"videos": {}}', encoding="utf-8-sig")  # a byte-order mark is fine
    assert read_json(path) == {"videos": {}}


def _train(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_config_errors_are_one_line_and_write_nothing(tmp_path):
    result = _train(tmp_path, "--config", "no_such_config.py", "--workdir", "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("config file no_such_config.py does not exist")
    result = _train(tmp_path, f"--config={DEMO}", "--workdir=run", "--config.model.sam.model_type=tinyy")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "error: model config sam.model_type='tinyy' is not one of 'vit_b', 'vit_l', 'vit_h', 'tiny', 'small'"
    assert not os.path.exists(tmp_path / "run")


def test_frames_of_two_sizes_are_named_before_any_model_is_built(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "00000.png")
    Image.fromarray(np.zeros((8, 6, 3), np.uint8)).save(tmp_path / "00001.png")
    with pytest.raises(inference.VideoInputError, match=f"frame {tmp_path}/00001.png is 6x8 but .*00000.png is 8x8"):
        inference.open_video(str(tmp_path))


def test_random_bytes_are_not_called_a_pickled_model(tmp_path):
    from refsam_jax.sam.build import SamCheckpointError
    from refsam_jax.sam.params import load_official_state_dict

    path = tmp_path / "sam_vit_b.pth"
    path.write_bytes(np.random.default_rng(0).bytes(1000).replace(b"PK", b"pk").lstrip(b"\x80"))
    with pytest.raises(SamCheckpointError, match=f"{path} is not a PyTorch checkpoint: it is neither a zip nor"):
        load_official_state_dict(str(path))


def test_ytvos_valid_video_count_is_checked_before_inference(tmp_path):
    from refsam_jax.data import synthetic
    from refsam_jax.evaluation import EvaluationInputError
    from refsam_jax.evaluation.video import predict_ytvos_valid

    synthetic.write_ref_youtube_vos(tmp_path / "raw", num_videos=2, num_frames=2, size=(16, 16), seed=0,
                                    num_valid_videos=2)

    class NeverCalled:
        threshold = 0.0

        def stream(self, frames, sentences):
            raise AssertionError("inference ran before the check")

    with pytest.raises(EvaluationInputError, match="gives 2 videos, expected 202"):
        predict_ytvos_valid(NeverCalled(), str(tmp_path / "tfds"), str(tmp_path / "raw"), str(tmp_path / "out"))
