"""SAM (pre-)training as a `Task` of the training loop: promptable segmentation of every object in the frames of
a Ref-YouTube-VOS-format dataset (class-agnostic, the sentences unused), then the trained SAM as a converted
checkpoint.

    python train.py --config configs/sam_demo.py --workdir runs/sam      # config.task = "sam"
    train_sam(config, workdir)   # loop.train(config, workdir, SamTask), then <workdir>/sam

Data (`refsam_jax/data/object_masks.py`): one annotated frame per example with up to K objects, each with a
prompt sampled on the host: a point uniformly in its mask, or (probability `prompts.box_fraction`) its box with
SAM's noise. The step encodes the frame once and decodes every object; a point is ambiguous, so its loss is that
of the best of the 3 multimask outputs (the others get no mask gradient), a box uses the single-mask output.
Loss (`train/losses.sam_loss`): 20 focal + 1 Dice at the decoder's resolution 4g x 4g (the ground truth is
downsampled on the host, the logits are not upsampled), plus the MSE of the predicted IoUs of every output. With
`prompts.refine_iters` = r > 0, r more rounds follow (SAM's iterative training): a click drawn in the step,
uniformly from the error region of the previous mask (positive on a missed pixel, negative on a false one), the
previous logits as the mask prompt, the single-mask output; the loss is the mean over the rounds.

Evaluation (`config.eval.split`, the builder's held-out videos): one click at the centre of each object (the
maximum of the distance transform of its ground-truth mask) in every annotated frame, through `SamPredictor`;
`mIoU_1pt` takes the output with the highest predicted IoU (what a user gets), `mIoU_1pt_oracle` the best of 3.

`train_sam` writes `<workdir>/sam` exactly as `python -m convert sam` does (`save_sam`: config.json + state/),
which `build_sam(checkpoint=...)` and RefSAM's `model.sam.checkpoint` read. A rerun resumes (or, when finished,
skips) training as the loop does and writes `<workdir>/sam` again, from the latest checkpoint.
"""

import itertools
import os
import shutil
from typing import Dict, Iterator, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from refsam_jax import paths, processes
from refsam_jax.checkpoint import load_trained_params
from refsam_jax.data import EvalExpression, default_data_config, iterate_eval_videos, write_synthetic_data
from refsam_jax.data.builders import parse_name
from refsam_jax.data.object_masks import center_point, make_object_masks_loader
from refsam_jax.data.pipeline import VIDEO_BUILDERS, builder_config, dataset_names, default_synthetic_config
from refsam_jax.evaluation.metrics import jaccard
from refsam_jax.evaluation.video import video_groups
from refsam_jax.sam.build import SamCheckpointError, load_sam, read_checkpoint_config, save_sam
from refsam_jax.sam.config import MODEL_TYPES, SamConfig, config_for_type
from refsam_jax.sam.model import Sam
from refsam_jax.sam.predictor import SamPredictor
from refsam_jax.sam.prompt_encoder import NOT_A_POINT
from refsam_jax.train import loop, losses, sharding

GROUPS = ("image_encoder", "prompt_encoder", "mask_decoder")
TRAINABLE = tuple((rf"^{group}\.", group) for group in GROUPS)  # the whole SAM, one group per part
TRAIN_KEYS = ("frames", "masks", "valid", "image_size", "points", "boxes", "use_box", "seed")
SAM_DIR = "sam"  # <workdir>/sam: the trained SAM as a converted checkpoint
POS_EMBED_STD = 0.02  # the ViT's position embedding at random initialisation (`build_trainable_sam`)


def sam_task_config() -> ml_collections.ConfigDict:
    """`loop.base_config()` plus every SAM-training key, with defaults (configs/sam_*.py edit it).

    Keys beyond the base:
      task                  "sam" (what train.py trains)
      model.sam.model_type  "vit_b" | "vit_l" | "vit_h" | "tiny"; "" = the architecture of model.sam.checkpoint
      model.sam.checkpoint  a converted SAM to start from (`python -m convert sam`, or another run's <workdir>/sam);
                            "" = random initialisation
      data                  `refsam_jax.data.default_data_config` without the clip and text keys, plus max_masks
                            (objects per frame, K; SAM samples up to 64)
      prompts               box_fraction (boxes vs points), box_noise_fraction / box_noise_max (std of the box
                            noise per side length, and its bound in pixels at 1024), refine_iters (extra rounds)
      loss                  focal_weight, dice_weight, iou_weight, focal_alpha, focal_gamma
      synthetic             `refsam_jax.data.default_synthetic_config` (the RefSAM demo's data)
      eval                  split (held-out split with ground truth; "" = none), max_frames (0 = all)
    `trainable` is the whole SAM in three groups, image_encoder, prompt_encoder and mask_decoder, each with its own
    optim.lr and optim.weight_decay.
    """
    config = loop.base_config()
    config.task = "sam"
    config.model = ml_collections.ConfigDict({"sam": {"model_type": "vit_b", "checkpoint": ""}})
    config.data = default_data_config()
    for key in ("num_frames", "max_text_length", "expressions_per_clip", "max_crop_size", "max_offset",
                "max_resample"):  # RefSAM only
        del config.data[key]
    config.data.max_masks = 16
    config.data.augment.resize_sizes = ()  # keep the aspect ratio, as SAM's ResizeLongestSide
    config.prompts = ml_collections.ConfigDict({"box_fraction": 0.5, "box_noise_fraction": 0.1, "box_noise_max": 20.0,
                                                "refine_iters": 0})
    config.loss = ml_collections.ConfigDict({"focal_weight": 20.0, "dice_weight": 1.0, "iou_weight": 1.0,
                                             "focal_alpha": 0.25, "focal_gamma": 2.0})
    config.synthetic = default_synthetic_config()
    config.trainable = TRAINABLE
    config.optim.lr.update(dict.fromkeys(GROUPS, 1e-4))
    config.optim.weight_decay.update(dict.fromkeys(GROUPS, 0.1))  # SAM's AdamW weight decay
    config.eval.split = "heldout"
    config.eval.max_frames = 0
    return config


def sam_architecture(sam: ml_collections.ConfigDict) -> SamConfig:
    """The architecture `config.model.sam` names: its model_type, else its checkpoint's; they must agree."""
    if sam.model_type and sam.model_type not in MODEL_TYPES:
        raise ValueError(f"config.model.sam.model_type must be one of {', '.join(MODEL_TYPES)} (or '' with a "
                         f"checkpoint), got {sam.model_type!r}")
    if not sam.checkpoint:
        if not sam.model_type:
            raise ValueError("config.model.sam: name a model_type or a checkpoint")
        return config_for_type(sam.model_type)
    saved_type, saved = read_checkpoint_config(sam.checkpoint)
    if sam.model_type and config_for_type(sam.model_type) != saved:
        raise SamCheckpointError(f"config.model.sam.checkpoint {sam.checkpoint} holds a SAM {saved_type}, not the "
                                 f"{sam.model_type} config.model.sam.model_type names (set model_type to '' to "
                                 f"train what the checkpoint holds)")
    return saved


def sample_clicks(keys: jax.Array, logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  image_side: int) -> Tuple[jax.Array, jax.Array]:
    """One corrective click per target, uniformly from the error region of `logits > 0`.

    Args:
      keys: `[N]` PRNG keys; logits, targets, weights: `[N, m, m]` (targets {0, 1}; weights 1 inside the image).
      image_side: S, the input side (the clicks are in input pixels).
    Returns:
      coordinates `[N, 1, 2]` (x, y) at the centre of the chosen m x m cell, and labels `[N, 1]`: 1 on a missed
      pixel, 0 on a false positive, NOT_A_POINT when the mask has no error.
    """
    n, m = targets.shape[0], targets.shape[-1]
    error = (((logits > 0) != (targets > 0.5)) & (weights > 0)).reshape(n, m * m)
    index = jax.vmap(jax.random.categorical)(keys, jnp.where(error, 0.0, -jnp.inf))
    row, col = jnp.divmod(index, m)
    cell = image_side / m
    coords = jnp.stack([(col + 0.5) * cell - 0.5, (row + 0.5) * cell - 0.5], axis=-1)
    positive = jnp.take_along_axis(targets.reshape(n, m * m), index[:, None], axis=1)[:, 0] > 0.5
    labels = jnp.where(error.any(axis=1), positive.astype(jnp.int32), NOT_A_POINT)
    return coords[:, None], labels[:, None]


def sam_loss(config: ml_collections.ConfigDict, model: Sam, batch: Mapping[str, jax.Array]):
    """`(loss, metrics)` of SAM on a batch of `data/object_masks.py` examples (see the module docstring): the mean
    over the valid targets and the prompting rounds."""
    b, k = batch["valid"].shape
    side = batch["frames"].shape[1]
    embedding, _ = model.image_encoder(batch["frames"].astype(loop.compute_dtype(config)))  # [B, g, g, C]
    embedding = jnp.repeat(embedding, k, axis=0)  # [N, g, g, C], N = B K targets

    def flat(x):
        return x.reshape((b * k,) + x.shape[2:])

    targets = flat(batch["masks"]).astype(jnp.float32)  # [N, m, m]
    m = targets.shape[-1]
    content = -(-batch["image_size"] * m // side)  # (h, w) of the image at the decoder's resolution, rounded up
    weights = jnp.repeat(losses.valid_mask(content, m), k, axis=0)
    valid, use_box, boxes = flat(batch["valid"]).astype(jnp.float32), flat(batch["use_box"]), flat(batch["boxes"])
    first_point, first_label = flat(batch["points"])[:, None], jnp.ones((b * k, 1), jnp.int32)
    keys = jax.vmap(lambda seed: jax.random.split(jax.random.key(seed), k))(batch["seed"]).reshape(b * k)
    loss_kwargs = config.loss.to_dict()  # focal_weight, dice_weight, iou_weight, focal_alpha, focal_gamma
    dense_pe = model.prompt_encoder.get_dense_pe()
    clicks, click_labels = jnp.zeros((b * k, 0, 2)), jnp.zeros((b * k, 0), jnp.int32)
    mask_prompt = None
    totals: Dict[str, jax.Array] = {}
    rounds = 1 + int(config.prompts.refine_iters)
    for r in range(rounds):
        # Both prompt kinds give 2 + r tokens: point, clicks, padding point | clicks, two box corners.
        point_tokens, dense = model.prompt_encoder(
            points=(jnp.concatenate([first_point, clicks], 1), jnp.concatenate([first_label, click_labels], 1)),
            masks=mask_prompt)
        box_tokens, _ = model.prompt_encoder(points=(clicks, click_labels) if r else None, boxes=boxes,
                                             masks=mask_prompt)
        sparse = jnp.where(use_box[:, None, None], box_tokens, point_tokens)
        logits, iou_pred, _ = model.mask_decoder.predict_masks(embedding, dense_pe, sparse, dense)  # [N, 4, m, m]
        single, single_parts, _ = losses.sam_loss(logits[:, :1], iou_pred[:, :1], targets, weights, **loss_kwargs)
        if r == 0:  # One point is ambiguous: the best of the 3 multimask outputs.
            multi, multi_parts, best = losses.sam_loss(logits[:, 1:], iou_pred[:, 1:], targets, weights,
                                                       **loss_kwargs)
            loss = jnp.where(use_box, single, multi)
            parts = {name: jnp.where(use_box, single_parts[name], multi_parts[name]) for name in single_parts}
            chosen = jnp.where(use_box, 0, 1 + best)
        else:
            loss, parts, chosen = single, single_parts, jnp.zeros_like(use_box, jnp.int32)
        for name, value in {"loss": loss, **parts}.items():
            totals[name] = totals.get(name, 0.0) + jnp.sum(value * valid)
        if r + 1 < rounds:
            previous = jax.lax.stop_gradient(jnp.take_along_axis(logits, chosen[:, None, None, None], axis=1)[:, 0])
            click, label = sample_clicks(jax.vmap(jax.random.fold_in, (0, None))(keys, r), previous, targets,
                                         weights, side)
            clicks, click_labels = jnp.concatenate([clicks, click], 1), jnp.concatenate([click_labels, label], 1)
            mask_prompt = previous[..., None]
    count = jnp.maximum(jnp.sum(valid), 1.0) * rounds
    metrics = {name: total / count for name, total in totals.items()}
    return metrics.pop("loss"), {**metrics, "targets": jnp.sum(valid) / b}


def frames_with_objects(items: Iterator[EvalExpression]) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """`iterate_eval_videos` items -> (frame uint8 `[H, W, 3]`, masks bool `[n, H, W]` of the n >= 1 objects in it)
    for every annotated frame with an object, video after video."""
    for video, expressions in video_groups(items):
        if expressions[0].masks is None:
            raise ValueError(f"video {video} has no ground truth: this split cannot be evaluated")
        objects = {item.obj_id: item.masks for item in expressions}
        for t, frame in enumerate(expressions[0].frames):
            masks = [masks[t] for masks in objects.values() if masks[t].any()]
            if masks:
                yield frame, np.stack(masks)


def evaluate_single_point(model: Sam, config: ml_collections.ConfigDict) -> Dict[str, float]:
    """mIoU of one centre click per object in the annotated frames of `config.eval.split` of the first dataset of
    `config.data.name` (see the module docstring), at the original resolution. `config.eval.max_frames`: only the
    first frames (0: all)."""
    data = config.data
    name = dataset_names(data)[0]
    items = iterate_eval_videos(name, data.data_dir, config.eval.split, builder_config=builder_config(name, data))
    predictor = SamPredictor(model)
    chosen, oracle = [], []
    for frame, masks in itertools.islice(frames_with_objects(items), config.eval.max_frames or None):
        predictor.set_image(frame)
        points = predictor.transform.apply_coords(np.stack([center_point(mask) for mask in masks]), masks.shape[1:])
        predicted, iou_pred, _ = predictor.predict_batch(points[:, None], np.ones((len(masks), 1)))
        iou = jaccard(np.broadcast_to(masks[:, None], predicted.shape), np.asarray(predicted))  # [n, 3]
        chosen.extend(iou[np.arange(len(masks)), np.argmax(np.asarray(iou_pred), axis=1)])
        oracle.extend(iou.max(axis=1))
    if not chosen:
        raise ValueError(f"config.eval.split {config.eval.split!r} of {name} has no annotated object")
    return {"mIoU_1pt": float(np.mean(chosen)), "mIoU_1pt_oracle": float(np.mean(oracle)),
            "objects": float(len(chosen))}


def build_trainable_sam(config: SamConfig, seed: int, dtype=jnp.float32) -> Sam:
    """A randomly initialised SAM to train from scratch: `Sam`'s initialisation, except the ViT's position
    embedding, N(0, 0.02^2) instead of SAM's zeros. With zeros, the patches of the zero padding are all equal and
    the first LayerNorm divides their gradient by sqrt(eps) (1e3): the first steps blow the encoder up."""
    model = Sam(config, rngs=nnx.Rngs(seed), dtype=dtype)
    pos_embed = model.image_encoder.pos_embed
    pos_embed[...] = POS_EMBED_STD * jax.random.normal(jax.random.key(seed), pos_embed.shape, pos_embed.dtype)
    return model


class SamTask(loop.Task):
    """SAM training on the object masks of `config.data` (`sam_task_config` lists the keys)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.sam_config = sam_architecture(config.model.sam)
        if config.data.image_size != self.sam_config.img_size:
            raise ValueError(f"config.data.image_size is {config.data.image_size} but the SAM takes "
                             f"{self.sam_config.img_size}-pixel inputs")
        for name in dataset_names(config.data):
            if parse_name(name)[0] not in VIDEO_BUILDERS:
                raise ValueError(f"config.data.name {name!r}: SAM training reads video datasets "
                                 f"({', '.join(VIDEO_BUILDERS)})")
        prompts = config.prompts
        if not 0.0 <= prompts.box_fraction <= 1.0 or prompts.refine_iters < 0 or config.data.max_masks < 1:
            raise ValueError(f"config.prompts.box_fraction must be in [0, 1] (got {prompts.box_fraction}), "
                             f"config.prompts.refine_iters >= 0 (got {prompts.refine_iters}) and "
                             f"config.data.max_masks >= 1 (got {config.data.max_masks})")
        self.model_config = {"task": "sam", "sam": self.sam_config.to_dict()}
        self.global_batch_size = config.data.batch_size

    def build_model(self) -> Sam:
        return build_trainable_sam(self.sam_config, self.config.seed, loop.compute_dtype(self.config))

    def load_pretrained(self, model: Sam) -> None:
        checkpoint = self.config.model.sam.checkpoint
        if checkpoint:
            nnx.update(model, nnx.state(load_sam(checkpoint, config=self.sam_config)))
            logging.info("loaded SAM from %s", checkpoint)

    def loss_fn(self, model: Sam, batch: Mapping[str, jax.Array]):
        return sam_loss(self.config, model, batch)

    def prepare_batch(self, batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {key: batch[key] for key in TRAIN_KEYS}

    def train_iterator(self, shard_index: int, shard_count: int, first_step: int = 0):
        if self.config.synthetic.enabled:
            processes.process_zero_first(lambda: write_synthetic_data(self.config, self.workdir),
                                        "synthetic data written")
        return iter(make_object_masks_loader(self.config, self.sam_config.mask_input_size, seed=self.config.seed,
                                             shard_index=shard_index, shard_count=shard_count,
                                             start_batch=first_step))

    def evaluate(self, model: Sam) -> Optional[Dict[str, float]]:
        if not self.config.eval.split:
            return None
        return evaluate_single_point(model, self.config)


def export_sam(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the SAM of the latest checkpoint of `<workdir>/checkpoints` to `<workdir>/sam` (`save_sam`), replacing
    what is there only once the new one is complete; returns the folder."""
    task = SamTask(config, workdir)
    model = build_trainable_sam(task.sam_config, config.seed)
    task.load_pretrained(model)  # The frozen parts (buffers, untrained groups) as training had them.
    step = load_trained_params(model, os.path.join(workdir, "checkpoints"), task.model_config)
    # One array over every process's devices (orbax saves no process-local array in a multi-process run).
    replicated = sharding.replicated(sharding.make_mesh(config.mesh))
    nnx.update(model, jax.device_put(jax.device_get(nnx.state(model)), replicated))
    target, partial = os.path.join(workdir, SAM_DIR), os.path.join(workdir, f".{SAM_DIR}.partial")
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    processes.barrier("SAM export starts", timeout_s=600)
    save_sam(model, partial)  # Every process takes part in orbax's save (and writes the same config.json).
    processes.barrier("SAM saved", timeout_s=600)
    if jax.process_index() == 0:
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(partial, target)
        logging.info("wrote the SAM of step %d to %s", step, target)
    processes.barrier("SAM exported", timeout_s=600)
    return target


def train_sam(config: ml_collections.ConfigDict, workdir: str) -> loop.TrainSummary:
    """Trains SAM as `config` says (see `sam_task_config`), then writes it to `<workdir>/sam` (`export_sam`).
    Relative paths are taken from the working directory, and every path the config names must exist."""
    paths.check_paths_exist(paths.absolute_paths(config))
    workdir = os.path.abspath(workdir)
    summary = loop.train(config, workdir, SamTask)
    export_sam(config, workdir)
    return summary
