"""`python -m convert sam`: official-layout .pth -> orbax checkpoint -> `build_sam(checkpoint=...)`, and the
errors for bad inputs."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from refsam_jax.convert import main
from refsam_jax.porting.torch_to_nnx import CheckpointMismatchError
from refsam_jax.sam import SAM_CONFIGS, SamCheckpointError, build_sam, load_sam, tiny_config
from refsam_jax.sam.common import Buffer
from refsam_jax.sam.params import (
    build_torch_sam,
    config_from_state_dict,
    infer_model_type,
    load_official_state_dict,
    sam_from_state_dict,
    verify,
)


@pytest.fixture(scope="module")
def tiny_pth(make_torch_sam, tmp_path_factory):
    """(path of a tiny SAM state dict saved with torch.save, the same state dict as numpy)."""
    model, state_dict = make_torch_sam(tiny_config(), seed=1)
    path = tmp_path_factory.mktemp("pth") / "sam_tiny.pth"
    torch.save(model.state_dict(), path)
    return str(path), state_dict


@pytest.fixture(scope="module")
def converted(tiny_pth, tmp_path_factory):
    """A checkpoint directory written by the CLI (with --verify) from `tiny_pth`."""
    output = str(tmp_path_factory.mktemp("converted") / "sam_tiny")
    assert main(["sam", "--checkpoint", tiny_pth[0], "--output", output, "--verify"]) == 0
    return output


def _flat_state(model):
    return {jax.tree_util.keystr(path): (type(var), np.asarray(var[...]))
            for path, var in nnx.to_flat_state(nnx.state(model))}


def test_cli_round_trip(tiny_pth, converted):
    _, state_dict = tiny_pth
    with open(os.path.join(converted, "config.json")) as f:
        record = json.load(f)
    assert record == {"model_type": "custom", "config": tiny_config().to_dict()}

    loaded = build_sam(checkpoint=converted)  # the model type comes from the checkpoint
    assert loaded.config == tiny_config()
    got, want = _flat_state(loaded), _flat_state(sam_from_state_dict(state_dict, tiny_config()))
    assert got.keys() == want.keys()
    for key, (kind, value) in want.items():
        assert got[key][0] is kind, key
        np.testing.assert_array_equal(got[key][1], value, err_msg=key)
    gaussian = loaded.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    assert isinstance(gaussian, Buffer) and not isinstance(gaussian, nnx.Param)
    np.testing.assert_array_equal(gaussian[...],
                                  state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    np.testing.assert_array_equal(loaded.image_encoder.neck.layers[2].kernel[...],
                                  state_dict["image_encoder.neck.2.weight"].transpose(2, 3, 1, 0))


def test_verify_detects_a_wrong_weight(tiny_pth):
    _, state_dict = tiny_pth
    model = sam_from_state_dict(state_dict, tiny_config())
    assert verify(model, state_dict)
    proj = model.image_encoder.blocks[0].attn.proj
    proj.bias.set_value(proj.bias[...] + 0.1)
    assert not verify(model, state_dict)


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_config_is_read_from_official_shapes(model_type):
    with torch.device("meta"):
        reference = build_torch_sam(SAM_CONFIGS[model_type])
    shapes_only = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in reference.state_dict().items()}
    assert config_from_state_dict(shapes_only) == SAM_CONFIGS[model_type]
    assert infer_model_type(shapes_only) == model_type


def test_cli_rejects_another_model_type(tiny_pth, tmp_path, caplog):
    output = tmp_path / "out"
    assert main(["sam", "--checkpoint", tiny_pth[0], "--model-type", "vit_b", "--output", str(output)]) == 1
    assert tiny_pth[0] in caplog.text and "custom" in caplog.text and "--model-type vit_b" in caplog.text
    assert not output.exists()


def test_cli_rejects_truncated_file(tiny_pth, tmp_path, caplog):
    data = open(tiny_pth[0], "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    assert main(["sam", "--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 1
    assert str(path) in caplog.text and "truncated or corrupt" in caplog.text


def test_cli_rejects_missing_file(tmp_path, caplog):
    path = tmp_path / "absent.pth"
    assert main(["sam", "--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 1
    assert f"{path} does not exist" in caplog.text


@pytest.mark.parametrize("content,reason", [
    ({"weight": torch.zeros(2)}, "lacks image_encoder.patch_embed.proj.weight"),
    ([torch.zeros(2)], "holds a list"),
    (torch.nn.Linear(2, 2), "pickled Python objects"),
])
def test_files_that_are_not_sam_state_dicts_are_rejected(tmp_path, content, reason):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(SamCheckpointError, match=reason) as error:
        load_official_state_dict(str(path))
    assert str(path) in str(error.value)


def test_state_dict_must_match_exactly(tiny_pth):
    _, state_dict = tiny_pth
    incomplete = {k: v for k, v in state_dict.items() if k != "mask_decoder.iou_token.weight"}
    with pytest.raises(CheckpointMismatchError, match="missing keys: mask_decoder.iou_token.weight"):
        sam_from_state_dict(incomplete, tiny_config(), source="x.pth")
    extra = {**state_dict, "image_encoder.extra": np.zeros(1, np.float32)}
    with pytest.raises(CheckpointMismatchError, match="unexpected keys: image_encoder.extra"):
        sam_from_state_dict(extra, tiny_config(), source="x.pth")


def test_loading_into_another_config_names_both(converted):
    with pytest.raises(SamCheckpointError, match=r"holds a SAM custom .* but a SAM vit_b .* was requested"):
        load_sam(converted, "vit_b")
    with pytest.raises(SamCheckpointError, match=r"holds a SAM custom .* but a SAM vit_h"):
        build_sam("vit_h", checkpoint=converted)
    other = dataclasses.replace(tiny_config(), decoder_mlp_dim=128)
    with pytest.raises(SamCheckpointError, match="was requested"):
        build_sam(config=other, checkpoint=converted)


def test_missing_or_corrupt_checkpoint_directories(converted, tmp_path):
    with pytest.raises(SamCheckpointError, match="does not exist"):
        load_sam(str(tmp_path / "absent"))

    no_config = tmp_path / "no_config"
    shutil.copytree(converted, no_config)
    os.remove(no_config / "config.json")
    with pytest.raises(SamCheckpointError, match="config.json is missing"):
        load_sam(str(no_config))

    bad_config = tmp_path / "bad_config"
    shutil.copytree(converted, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "custom", "config": {"encoder_depth": 4')
    with pytest.raises(SamCheckpointError, match="bad_config/config.json is not a valid SAM checkpoint config"):
        load_sam(str(bad_config))

    damaged = tmp_path / "damaged"
    shutil.copytree(converted, damaged)
    for root, _, files in os.walk(damaged / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(os.path.getsize(os.path.join(root, name)) // 2)
    with pytest.raises(SamCheckpointError, match="could not be restored"):
        load_sam(str(damaged))


def test_build_sam_without_checkpoint():
    with pytest.raises(ValueError, match="unknown SAM model type 'vit_x'"):
        build_sam("vit_x")
    model = nnx.eval_shape(lambda: build_sam(config=tiny_config(), seed=3))
    assert model.config == tiny_config()
    assert model.image_encoder.pos_embed.shape == (1, 8, 8, 48)
    assert isinstance(model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, Buffer)
    vit_b = nnx.eval_shape(lambda: build_sam())
    assert vit_b.config == SAM_CONFIGS["vit_b"] and len(vit_b.image_encoder.blocks) == 12
