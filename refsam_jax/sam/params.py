"""Segment Anything weights: an official `sam_vit_*.pth` state dict -> our NNX `Sam`, and the check against the
PyTorch `segment_anything` model (`python -m convert sam`; Hugging Face folders: `hf_params`).

The architecture is read from the weights' shapes, so any official-layout state dict converts. torch is
imported only by the functions that read .pth files or run the reference model.
"""

import functools
import logging
import os
import pickle
import re
from typing import Dict, Mapping

import jax
import numpy as np
from flax import nnx

from refsam_jax.porting.torch_to_nnx import load_torch_state_dict
from refsam_jax.sam.build import SamCheckpointError
from refsam_jax.sam.config import SAM_CONFIGS, SamConfig, model_type_of
from refsam_jax.sam.model import Sam
from refsam_jax.sam.prompt_encoder import MASK_IN_CHANS
from refsam_jax.sam.torch_reference import import_segment_anything

log = logging.getLogger(__name__)

# Keys every SAM state dict has; their absence means the file is something else.
_SIGNATURE_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.pos_embed",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "mask_decoder.iou_token.weight",
)
# Our nnx.Sequential modules keep their layers in `.layers`; torch's nn.Sequential indexes them directly.
_SEQUENTIAL = re.compile(r"\b(neck|mask_downscaling|output_upscaling)\.layers\.")

# Max |JAX - PyTorch| accepted by --verify (float32, random input).
TOLERANCES = {"image embedding": 1e-3, "mask logits": 1e-2, "iou predictions": 1e-3}


def official_key(key: str) -> str:
    """Maps a torch-style key derived from our NNX paths to the `segment_anything` key."""
    return _SEQUENTIAL.sub(r"\1.", key)


def load_official_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Reads an official SAM `.pth` state dict as float32 numpy arrays, with clear errors for bad files."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"SAM checkpoint {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch.save writes a zip (or, before 1.6, a pickle)
        raise SamCheckpointError(f"{path} is not a PyTorch checkpoint: it is neither a zip nor a pickle file "
                                 f"(starts with {magic!r})")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise SamCheckpointError(
                f"{path} is not a SAM state dict: it holds pickled Python objects (a whole model?); save "
                f"model.state_dict() instead") from None
        raise SamCheckpointError(f"{path} could not be read (truncated or corrupt file): {e}") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SamCheckpointError(f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt "
                                 f"file): {detail}") from e
    if not isinstance(state_dict, Mapping):
        raise SamCheckpointError(f"{path} is not a SAM state dict: it holds a {type(state_dict).__name__}")
    missing = [k for k in _SIGNATURE_KEYS if k not in state_dict]
    if missing:
        shown = ", ".join(list(state_dict)[:5]) or "nothing"
        raise SamCheckpointError(f"{path} is not a SAM state dict: it lacks {', '.join(missing)} "
                                 f"(it starts with {shown})")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise SamCheckpointError(f"{path} is not a SAM state dict: {', '.join(not_tensors[:5])} are not tensors")
    return {k: v.detach().float().numpy() for k, v in state_dict.items()}


def _count(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.fullmatch(k))})


def config_from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "state dict") -> SamConfig:
    """The SamConfig of an official-layout SAM state dict, read from its shapes.

    Attention head counts of the mask decoder are not visible in the weights: SAM's 8 is assumed. A window
    size equal to the embedding grid cannot be told from global attention either.
    """
    try:
        patch = state_dict["image_encoder.patch_embed.proj.weight"]  # [D, 3, p, p]
        grid = state_dict["image_encoder.pos_embed"].shape[1]
        embed_dim, patch_size = patch.shape[0], patch.shape[2]
        depth = _count(state_dict, r"image_encoder\.blocks\.(\d+)\.attn\.qkv\.weight")
        rel_pos = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
        global_blocks = tuple(i for i, shape in enumerate(rel_pos) if shape[0] == 2 * grid - 1)
        window_sizes = {(shape[0] + 1) // 2 for shape in rel_pos if shape[0] != 2 * grid - 1}
        if len(window_sizes) > 1:
            raise SamCheckpointError(f"{source}: blocks use different window sizes {sorted(window_sizes)}")
        decoder = "mask_decoder.transformer.layers"
        return SamConfig(
            encoder_embed_dim=embed_dim,
            encoder_depth=depth,
            encoder_num_heads=embed_dim // rel_pos[0][1],
            encoder_global_attn_indexes=global_blocks,
            img_size=grid * patch_size,
            patch_size=patch_size,
            window_size=window_sizes.pop() if window_sizes else SAM_CONFIGS["vit_b"].window_size,
            mlp_ratio=state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            prompt_embed_dim=state_dict["image_encoder.neck.0.weight"].shape[0],
            decoder_depth=_count(state_dict, decoder + r"\.(\d+)\.self_attn\.q_proj\.weight"),
            decoder_mlp_dim=state_dict[f"{decoder}.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=_count(state_dict, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight"),
            iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        )
    except (KeyError, IndexError) as e:
        raise SamCheckpointError(f"{source} is not a complete SAM state dict: cannot read {e}") from None
    except ValueError as e:
        raise SamCheckpointError(f"{source}: {e}") from None


def infer_model_type(state_dict: Mapping[str, np.ndarray]) -> str:
    """"vit_b", "vit_l" or "vit_h" for official architectures, "custom" for any other."""
    return model_type_of(config_from_state_dict(state_dict))


def sam_from_state_dict(state_dict: Mapping[str, np.ndarray], config: SamConfig,
                        source: str = "state dict") -> Sam:
    """A Sam filled from an official-layout state dict; every key must be used and every weight filled."""
    model = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, state_dict, rename=official_key, source=source)
    return model


def build_torch_sam(config: SamConfig):
    """The PyTorch `segment_anything` Sam with the architecture of `config` (random weights, eval mode)."""
    import torch

    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling import Sam as TorchSam

    grid = config.image_embedding_size
    return TorchSam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth, embed_dim=config.encoder_embed_dim, img_size=config.img_size,
            mlp_ratio=config.mlp_ratio, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads, patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes, window_size=config.window_size,
            out_chans=config.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size), mask_in_chans=MASK_IN_CHANS),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim),
    ).eval()


@nnx.jit
def _forward(model: Sam, image, coords, labels, box):
    """Image embedding, multimask logits and IoU for one image and a points+box prompt."""
    embedding, _ = model.image_encoder(image)
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=box)
    masks, iou = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense,
                                    multimask_output=True)
    return embedding, masks, iou


def verify(model: Sam, state_dict: Mapping[str, np.ndarray], seed: int = 0) -> bool:
    """Runs `model` and `segment_anything` on the same weights, a random image and point+box prompts;
    logs max|Δ| of the image embedding, mask logits and IoU, and returns whether all are within TOLERANCES."""
    import torch

    config = model.config
    reference = build_torch_sam(config)
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    rng = np.random.default_rng(seed)
    size = config.img_size
    image = rng.normal(size=(1, size, size, 3)).astype(np.float32)
    coords = rng.uniform(0, size, (1, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0]], np.int32)
    box = np.sort(rng.uniform(0, size, (1, 2, 2)), axis=1).reshape(1, 4).astype(np.float32)

    log.info("running segment_anything (PyTorch) on a %dx%d input", size, size)
    with torch.no_grad():
        t_emb = reference.image_encoder(torch.from_numpy(image).permute(0, 3, 1, 2))
        sparse, dense = reference.prompt_encoder(
            points=(torch.from_numpy(coords), torch.from_numpy(labels)), boxes=torch.from_numpy(box), masks=None)
        t_masks, t_iou = reference.mask_decoder(t_emb, reference.prompt_encoder.get_dense_pe(), sparse, dense,
                                                multimask_output=True)

    log.info("running the converted JAX model")
    with jax.default_matmul_precision("highest"):
        embedding, masks, iou = _forward(model, image, coords, labels, box)
    deltas = {
        "image embedding": np.abs(np.asarray(embedding) - t_emb.permute(0, 2, 3, 1).numpy()).max(),
        "mask logits": np.abs(np.asarray(masks) - t_masks.numpy()).max(),
        "iou predictions": np.abs(np.asarray(iou) - t_iou.numpy()).max(),
    }
    ok = True
    for name, delta in deltas.items():
        passed = delta <= TOLERANCES[name]
        ok &= bool(passed)
        log.info("max|JAX - PyTorch| %-16s %.3g (tolerance %.0e) %s", name, delta, TOLERANCES[name],
                 "ok" if passed else "FAILED")
    return ok
