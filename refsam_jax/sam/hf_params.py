"""Hugging Face `SamModel` folders (config.json + safetensors/bin) -> official segment_anything state dicts.

transformers' SAM renames the official modules but keeps every tensor's layout, so the conversion is a list
of renames to the segment_anything key names; `params` then loads those as it loads an official .pth.
The renames:

  vision_encoder.patch_embed.projection       image_encoder.patch_embed.proj
  vision_encoder.layers.i.layer_norm{1,2}     image_encoder.blocks.i.norm{1,2}   (attn, mlp: same names)
  vision_encoder.neck.{conv1,layer_norm1,conv2,layer_norm2}   image_encoder.neck.{0,1,2,3}
  shared_image_embedding.positional_embedding prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
  prompt_encoder.mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}   prompt_encoder.mask_downscaling.{0,1,3,4,6}
  prompt_encoder.point_embed.i                prompt_encoder.point_embeddings.i
  mask_decoder.transformer.layers.i.layer_normN   ...norm{N};  layer_norm_final_attn -> norm_final_attn
  mask_decoder.{upscale_conv1,upscale_layer_norm,upscale_conv2}   mask_decoder.output_upscaling.{0,1,3}
  ...{output_hypernetworks_mlps.i,iou_prediction_head}.{proj_in,layers.j,proj_out}   ...layers.{0,j+1,depth-1}

`prompt_encoder.shared_embedding.positional_embedding` is a tied copy of `shared_image_embedding.
positional_embedding` (`SamModel._tied_weights_keys`); it is checked equal and dropped. Any other key is an
error.

One numerical difference is inherent to transformers' port: its two-way-transformer blocks use the mask
decoder config's `layer_norm_eps` (1e-6) where segment_anything uses PyTorch's default 1e-5. We follow
segment_anything, so mask logits differ from transformers' by a tiny amount (see `verify_hf`).
"""

import json
import logging
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

import jax
import numpy as np
from flax import nnx

from refsam_jax.porting.hf_weights import find_weight_files, read_state_dict
from refsam_jax.sam.build import SamCheckpointError
from refsam_jax.sam.config import SamConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TIED_KEY = "prompt_encoder.shared_embedding.positional_embedding"
SHARED_PE_KEY = "shared_image_embedding.positional_embedding"
# Max |ours - transformers| accepted by `verify_hf` by default (float32, random input), as `params`.
DEFAULT_ATOL = {"image_embeddings": 1e-3, "mask_logits": 1e-2, "iou": 1e-3}

_W = r"(weight|bias)"
_PROJ = r"([qkv]_proj|out_proj)"
_RENAMES: List[Tuple[str, str]] = [
    (rf"vision_encoder\.patch_embed\.projection\.{_W}", r"image_encoder.patch_embed.proj.\1"),
    (r"vision_encoder\.pos_embed", "image_encoder.pos_embed"),
    (rf"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.{_W}", r"image_encoder.blocks.\1.norm\2.\3"),
    (rf"vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)\.{_W}", r"image_encoder.blocks.\1.attn.\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.attn\.(rel_pos_[hw])", r"image_encoder.blocks.\1.attn.\2"),
    (rf"vision_encoder\.layers\.(\d+)\.mlp\.(lin[12])\.{_W}", r"image_encoder.blocks.\1.mlp.\2.\3"),
    (r"vision_encoder\.neck\.conv1\.weight", "image_encoder.neck.0.weight"),
    (rf"vision_encoder\.neck\.layer_norm1\.{_W}", r"image_encoder.neck.1.\1"),
    (r"vision_encoder\.neck\.conv2\.weight", "image_encoder.neck.2.weight"),
    (rf"vision_encoder\.neck\.layer_norm2\.{_W}", r"image_encoder.neck.3.\1"),
    (re.escape(SHARED_PE_KEY), "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (rf"prompt_encoder\.mask_embed\.conv1\.{_W}", r"prompt_encoder.mask_downscaling.0.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm1\.{_W}", r"prompt_encoder.mask_downscaling.1.\1"),
    (rf"prompt_encoder\.mask_embed\.conv2\.{_W}", r"prompt_encoder.mask_downscaling.3.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm2\.{_W}", r"prompt_encoder.mask_downscaling.4.\1"),
    (rf"prompt_encoder\.mask_embed\.conv3\.{_W}", r"prompt_encoder.mask_downscaling.6.\1"),
    (r"prompt_encoder\.point_embed\.(\d+)\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"prompt_encoder\.(no_mask_embed|not_a_point_embed)\.weight", r"prompt_encoder.\1.weight"),
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\."
     rf"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.{_PROJ}\.{_W}",
     r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.{_W}",
     r"mask_decoder.transformer.layers.\1.norm\2.\3"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_W}", r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
    (rf"mask_decoder\.transformer\.final_attn_token_to_image\.{_PROJ}\.{_W}",
     r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
    (rf"mask_decoder\.transformer\.layer_norm_final_attn\.{_W}", r"mask_decoder.transformer.norm_final_attn.\1"),
    (rf"mask_decoder\.upscale_conv1\.{_W}", r"mask_decoder.output_upscaling.0.\1"),
    (rf"mask_decoder\.upscale_layer_norm\.{_W}", r"mask_decoder.output_upscaling.1.\1"),
    (rf"mask_decoder\.upscale_conv2\.{_W}", r"mask_decoder.output_upscaling.3.\1"),
]
# transformers' SamFeedForward holds proj_in, layers[0 .. depth-3], proj_out; segment_anything's MLP holds
# layers[0 .. depth-1].
_FEED_FORWARD = re.compile(
    rf"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.(proj_in|proj_out|layers\.(\d+))\.{_W}")
_HYPERNETWORK_DEPTH = 3


def _official_key(hf_key: str, iou_head_depth: int) -> Optional[str]:
    """The segment_anything name of a transformers SamModel key, or None if the key is unknown."""
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, hf_key):
            return re.sub(pattern, replacement, hf_key)
    match = _FEED_FORWARD.fullmatch(hf_key)
    if match is None:
        return None
    head, layer, hidden_index, param = match.groups()
    depth = iou_head_depth if head == "iou_prediction_head" else _HYPERNETWORK_DEPTH
    index = {"proj_in": 0, "proj_out": depth - 1}.get(layer)
    if index is None:
        index = int(hidden_index) + 1
        if index >= depth - 1:
            return None
    return f"mask_decoder.{head}.layers.{index}.{param}"


def hf_to_official(hf_state_dict: Mapping[str, np.ndarray], config: SamConfig,
                   source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """Renames a transformers SamModel state dict to segment_anything's key names (same tensors)."""
    state_dict = dict(hf_state_dict)
    if TIED_KEY in state_dict:
        tied = state_dict.pop(TIED_KEY)
        if SHARED_PE_KEY not in state_dict:
            state_dict[SHARED_PE_KEY] = tied
        elif not np.array_equal(tied, state_dict[SHARED_PE_KEY]):
            raise SamCheckpointError(f"{source}: {TIED_KEY} differs from {SHARED_PE_KEY}, but transformers "
                                     f"ties them")
    official, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _official_key(key, config.iou_head_depth)
        if new_key is None:
            unknown.append(key)
        else:
            official[new_key] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 12 else "")
        raise SamCheckpointError(f"{source}: keys that are not part of a transformers SamModel: {shown}")
    return official


def _square(value, name: str, problems: List[str]) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            problems.append(f"{name} must be square, got {value}")
        value = value[0]
    return int(value)


def config_from_hf(hf_config, source: str = CONFIG_FILE) -> SamConfig:
    """Our SamConfig from a `transformers.SamConfig`; raises for variants segment_anything cannot express."""
    vision, prompt, decoder = hf_config.vision_config, hf_config.prompt_encoder_config, hf_config.mask_decoder_config
    problems = []
    img_size = _square(vision.image_size, "vision_config.image_size", problems)
    patch_size = _square(vision.patch_size, "vision_config.patch_size", problems)
    embed = vision.output_channels
    required = [
        ("vision_config.num_channels", vision.num_channels, 3),
        ("vision_config.use_abs_pos", vision.use_abs_pos, True),
        ("vision_config.use_rel_pos", vision.use_rel_pos, True),
        ("vision_config.qkv_bias", vision.qkv_bias, True),
        ("vision_config.hidden_act", vision.hidden_act, "gelu"),
        ("vision_config.layer_norm_eps", vision.layer_norm_eps, 1e-6),
        ("vision_config.num_pos_feats", vision.num_pos_feats, embed // 2),
        ("prompt_encoder_config.hidden_size", prompt.hidden_size, embed),
        ("prompt_encoder_config.image_size", _square(prompt.image_size, "prompt image_size", problems), img_size),
        ("prompt_encoder_config.patch_size", _square(prompt.patch_size, "prompt patch_size", problems), patch_size),
        ("prompt_encoder_config.mask_input_channels", prompt.mask_input_channels, 16),
        ("prompt_encoder_config.num_point_embeddings", prompt.num_point_embeddings, 4),
        ("prompt_encoder_config.hidden_act", prompt.hidden_act, "gelu"),
        ("prompt_encoder_config.layer_norm_eps", prompt.layer_norm_eps, 1e-6),
        ("mask_decoder_config.hidden_size", decoder.hidden_size, embed),
        ("mask_decoder_config.hidden_act", decoder.hidden_act, "relu"),
        ("mask_decoder_config.attention_downsample_rate", decoder.attention_downsample_rate, 2),
    ]
    problems += [f"{name} is {value!r}, segment_anything requires {want!r}" for name, value, want in required
                 if value != want]
    mlp_ratio = vision.mlp_dim / vision.hidden_size
    if int(vision.hidden_size * mlp_ratio) != vision.mlp_dim:
        problems.append(f"vision_config.mlp_dim {vision.mlp_dim} is not expressible as an mlp_ratio of "
                        f"hidden_size {vision.hidden_size}")
    if problems:
        raise SamCheckpointError(f"{source}: unsupported SAM variant: " + "; ".join(problems))
    return SamConfig(
        encoder_embed_dim=vision.hidden_size,
        encoder_depth=vision.num_hidden_layers,
        encoder_num_heads=vision.num_attention_heads,
        encoder_global_attn_indexes=tuple(vision.global_attn_indexes),
        img_size=img_size,
        patch_size=patch_size,
        window_size=vision.window_size,
        mlp_ratio=mlp_ratio,
        prompt_embed_dim=embed,
        decoder_depth=decoder.num_hidden_layers,
        decoder_mlp_dim=decoder.mlp_dim,
        decoder_num_heads=decoder.num_attention_heads,
        num_multimask_outputs=decoder.num_multimask_outputs,
        iou_head_depth=decoder.iou_head_depth,
        iou_head_hidden_dim=decoder.iou_head_hidden_dim,
    )


def read_hf_config(folder: str):
    """The `transformers.SamConfig` of a Hugging Face SAM folder, with clear errors for other folders."""
    import transformers

    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a directory (expected a Hugging Face SamModel folder)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; a Hugging Face SamModel folder holds config.json and weights")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise SamCheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("model_type") != "sam":
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        raise SamCheckpointError(f"{path}: not a SAM config (model_type {model_type!r}, expected 'sam')")
    return transformers.SamConfig.from_pretrained(folder)


def load_hf_state_dict(folder: str) -> Dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder's weights (safetensors or PyTorch .bin, sharded or not), as numpy
    with floating point widened to float32."""
    state_dict = {}
    for key, value in read_state_dict(find_weight_files(folder)).items():
        state_dict[key] = value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    return state_dict


def load_hf_sam(folder: str) -> Tuple[SamConfig, Dict[str, np.ndarray]]:
    """A Hugging Face SamModel folder -> (our SamConfig, state dict with segment_anything key names)."""
    config = config_from_hf(read_hf_config(folder), source=os.path.join(folder, CONFIG_FILE))
    return config, hf_to_official(load_hf_state_dict(folder), config, source=folder)


def _random_prompts(config: SamConfig, rng: np.random.Generator):
    """(points, box, mask) prompt sets in input-frame pixels for one image: points `([1, N, 2], [1, N])`,
    box `[1, 4]`, mask logits `[1, 4g, 4g]`; None where a prompt is absent."""
    size, side = config.img_size, config.mask_input_size
    points = (rng.uniform(0, size, (1, 3, 2)).astype(np.float32), np.array([[1, 0, 1]], np.int32))
    box = np.sort(rng.uniform(0, size, (1, 2, 2)), axis=1).reshape(1, 4).astype(np.float32)
    mask = rng.normal(scale=3.0, size=(1, side, side)).astype(np.float32)
    return [(points, None, None), (None, box, None), (points, box, None), (points, None, mask)]


@nnx.jit
def _encode(model, image):
    return model.image_encoder(image)[0]


@nnx.jit
def _decode(model, embedding, points, box, mask):
    """(masks, iou) with multimask_output True and with False, from one compilation."""
    sparse, dense = model.prompt_encoder(points=points, boxes=box, masks=mask)
    image_pe = model.prompt_encoder.get_dense_pe()
    return tuple(model.mask_decoder(embedding, image_pe, sparse, dense, multimask) for multimask in (True, False))


def verify_hf(model, folder: str, *, seed: int = 0,
              atol: Optional[Union[float, Mapping[str, float]]] = DEFAULT_ATOL) -> Dict[str, float]:
    """Runs transformers' PyTorch SamModel from `folder` and our `model` on the same random normalised image
    and prompts (points, box, points+box, points+mask; multimask on and off).

    Returns max |ours - transformers| of the image embeddings, low-res mask logits and IoU predictions.
    Raises SamCheckpointError when one exceeds `atol` (a float for all, a dict per name, None to only report).
    """
    import torch
    import transformers

    config = model.config
    # Weights committed to one device: models built in memory and restored from a checkpoint (committed by
    # orbax) then share the compiled functions, which jax.jit keys on commitment.
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))
    log.info("running transformers' SamModel (PyTorch) from %s and the converted model", folder)
    reference = transformers.SamModel.from_pretrained(folder).float().eval()
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(1, config.img_size, config.img_size, 3)).astype(np.float32)
    diffs = {"image_embeddings": 0.0, "mask_logits": 0.0, "iou": 0.0}
    with torch.no_grad(), jax.default_matmul_precision("highest"):
        embedding = _encode(model, image)
        reference_embedding = reference.get_image_embeddings(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()))
        diffs["image_embeddings"] = float(np.abs(
            np.asarray(embedding) - reference_embedding.numpy().transpose(0, 2, 3, 1)).max())
        for points, box, mask in _random_prompts(config, rng):
            inputs = {}
            if points is not None:
                inputs.update(input_points=torch.from_numpy(points[0][:, None]),
                              input_labels=torch.from_numpy(points[1][:, None]))
            if box is not None:
                inputs["input_boxes"] = torch.from_numpy(box[:, None])
            if mask is not None:
                inputs["input_masks"] = torch.from_numpy(mask[:, None])
            outputs = _decode(model, embedding, points, box, None if mask is None else mask[..., None])
            for multimask, (masks, iou) in zip((True, False), outputs):
                out = reference(image_embeddings=reference_embedding, multimask_output=multimask, **inputs)
                diffs["mask_logits"] = max(diffs["mask_logits"], float(np.abs(
                    np.asarray(masks) - out.pred_masks[:, 0].numpy()).max()))
                diffs["iou"] = max(diffs["iou"], float(np.abs(np.asarray(iou) - out.iou_scores[:, 0].numpy()).max()))
    limits = {} if atol is None else atol if isinstance(atol, Mapping) else {name: atol for name in diffs}
    for name, value in diffs.items():
        verdict = "" if name not in limits else "ok" if value <= limits[name] else "FAILED"
        log.info("max|JAX - transformers| %-16s %.3g %s", name, value, verdict)
    failed = [name for name, value in diffs.items() if name in limits and value > limits[name]]
    if failed:
        raise SamCheckpointError(f"{folder}: the converted model differs from transformers' SamModel: " + ", ".join(
            f"{name} {diffs[name]:.3g} > {limits[name]:g}" for name in failed))
    return diffs
