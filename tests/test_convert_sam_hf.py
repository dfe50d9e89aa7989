"""Hugging Face SamModel folders -> our SAM: key mapping, CLI conversion, parity with transformers, errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers  # before segment_anything: its torchvision stand-in must not be seen by transformers
from safetensors.torch import save_file

from refsam_jax.convert import main as convert_main
from refsam_jax.sam import SamCheckpointError, build_sam, tiny_config
from refsam_jax.sam import hf_params as sam_hf
from refsam_jax.sam.params import build_torch_sam, sam_from_state_dict

STRICT_ATOL = {"image_embeddings": 1e-4, "mask_logits": 1e-3, "iou": 1e-4}


def _hf_tiny_config(**vision_overrides) -> transformers.SamConfig:
    """transformers' SamConfig with the architecture of `tiny_config()`."""
    ours = tiny_config()
    vision = dict(hidden_size=ours.encoder_embed_dim, num_hidden_layers=ours.encoder_depth,
                  num_attention_heads=ours.encoder_num_heads,
                  global_attn_indexes=list(ours.encoder_global_attn_indexes), image_size=ours.img_size,
                  patch_size=ours.patch_size, window_size=ours.window_size, output_channels=ours.prompt_embed_dim,
                  num_pos_feats=ours.prompt_embed_dim // 2)
    vision.update(vision_overrides)
    return transformers.SamConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=ours.prompt_embed_dim, image_size=ours.img_size,
                                   patch_size=ours.patch_size),
        mask_decoder_config=dict(hidden_size=ours.prompt_embed_dim, mlp_dim=ours.decoder_mlp_dim,
                                 iou_head_hidden_dim=ours.iou_head_hidden_dim),
    )


def _save_random_hf_sam(folder, config=None, seed=0) -> transformers.SamModel:
    """A transformers SamModel with every weight random (LayerNorms, rel-pos, tokens included), saved."""
    torch.manual_seed(seed)
    model = transformers.SamModel(config or _hf_tiny_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(offset + 0.3 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_sam")
    _save_random_hf_sam(folder)
    return str(folder)


def test_config_from_hf_is_tiny_config(hf_folder):
    config, _ = sam_hf.load_hf_sam(hf_folder)
    assert config == tiny_config()


def test_mapped_keys_load_into_segment_anything_and_match_transformers(hf_folder):
    """The renamed state dict fills segment_anything's PyTorch Sam exactly and gives transformers' outputs."""
    config, state_dict = sam_hf.load_hf_sam(hf_folder)
    reference = build_torch_sam(config)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    hf = transformers.SamModel.from_pretrained(hf_folder).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, config.img_size, config.img_size, generator=generator)
    coords = torch.rand(1, 2, 2, generator=generator) * config.img_size
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[5.0, 9.0, 40.0, 51.0]])
    with torch.no_grad():
        embedding = reference.image_encoder(image)
        hf_embedding = hf.get_image_embeddings(image)
        np.testing.assert_allclose(embedding.numpy(), hf_embedding.numpy(), atol=1e-5)
        sparse, dense = reference.prompt_encoder(points=(coords, labels), boxes=box, masks=None)
        masks, iou = reference.mask_decoder(embedding, reference.prompt_encoder.get_dense_pe(), sparse, dense,
                                            multimask_output=True)
        out = hf(image_embeddings=hf_embedding, input_points=coords[:, None], input_labels=labels[:, None],
                 input_boxes=box[:, None], multimask_output=True)
    # transformers' two-way-transformer LayerNorms use eps 1e-6 where segment_anything uses 1e-5.
    np.testing.assert_allclose(masks.numpy(), out.pred_masks[:, 0].numpy(), atol=1e-3)
    np.testing.assert_allclose(iou.numpy(), out.iou_scores[:, 0].numpy(), atol=1e-4)


def test_cli_converts_and_matches_transformers(hf_folder, tmp_path):
    output = str(tmp_path / "sam_tiny")
    assert convert_main(["sam", "--hf", hf_folder, "--output", output, "--verify"]) == 0
    model = build_sam(None, checkpoint=output)
    assert model.config == tiny_config()
    diffs = sam_hf.verify_hf(model, hf_folder, atol=STRICT_ATOL)
    assert set(diffs) == set(STRICT_ATOL)
    for name, value in diffs.items():
        assert value <= STRICT_ATOL[name], (name, value)


def test_verify_hf_detects_wrong_weights(hf_folder):
    config, state_dict = sam_hf.load_hf_sam(hf_folder)
    model = sam_from_state_dict(state_dict, config)
    neck_norm = model.image_encoder.neck.layers[3].bias
    neck_norm.set_value(neck_norm[...] + 0.1)
    with pytest.raises(SamCheckpointError, match="image_embeddings .* mask_logits .* iou"):
        sam_hf.verify_hf(model, hf_folder, atol=STRICT_ATOL)


def test_pytorch_bin_and_tied_copy(hf_folder, tmp_path):
    """A pytorch_model.bin folder holding the tied positional matrix twice converts to the same weights."""
    _, expected = sam_hf.load_hf_sam(hf_folder)
    hf_state = sam_hf.load_hf_state_dict(hf_folder)
    assert sam_hf.TIED_KEY not in hf_state  # save_pretrained drops the tied copy
    hf_state[sam_hf.TIED_KEY] = hf_state[sam_hf.SHARED_PE_KEY].copy()
    shutil.copy(f"{hf_folder}/config.json", tmp_path)
    torch.save({k: torch.from_numpy(v) for k, v in hf_state.items()}, tmp_path / "pytorch_model.bin")
    _, state_dict = sam_hf.load_hf_sam(str(tmp_path))
    assert set(state_dict) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state_dict[key], value)


def _folder_with(tmp_path, hf_folder, state_dict):
    shutil.copy(f"{hf_folder}/config.json", tmp_path)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
              str(tmp_path / "model.safetensors"))
    return str(tmp_path)


def test_unknown_key_is_an_error(hf_folder, tmp_path):
    hf_state = sam_hf.load_hf_state_dict(hf_folder)
    hf_state["mask_decoder.extra_head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(SamCheckpointError, match="mask_decoder.extra_head.weight"):
        sam_hf.load_hf_sam(_folder_with(tmp_path, hf_folder, hf_state))


def test_tied_copy_must_match(hf_folder, tmp_path):
    hf_state = sam_hf.load_hf_state_dict(hf_folder)
    hf_state[sam_hf.TIED_KEY] = hf_state[sam_hf.SHARED_PE_KEY] + 1.0
    with pytest.raises(SamCheckpointError, match="differs"):
        sam_hf.load_hf_sam(_folder_with(tmp_path, hf_folder, hf_state))


def test_folder_errors(hf_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        sam_hf.load_hf_sam(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        sam_hf.load_hf_sam(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SamCheckpointError, match="not a SAM config"):
        sam_hf.load_hf_sam(str(tmp_path))
    shutil.copy(f"{hf_folder}/config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        sam_hf.load_hf_sam(str(tmp_path))
    # The CLI reports the problem and fails without a traceback.
    assert convert_main(["sam", "--hf", str(tmp_path), "--output", str(tmp_path / "out")]) == 1


def test_unsupported_variant_is_an_error(tmp_path):
    _hf_tiny_config(use_rel_pos=False).save_pretrained(tmp_path)
    with pytest.raises(SamCheckpointError, match="use_rel_pos"):
        sam_hf.load_hf_sam(str(tmp_path))
