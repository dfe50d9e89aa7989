"""RefSAM as a training `Task`: model, frozen text encoder, data, loss and held-out evaluation.

Text features. The text encoder is frozen and outside RefSAM. With `config.text_cache=True` (default) the
features are computed on the host side, once per distinct (token ids, mask) row, by the encoder's own
jitted forward on this host's first device, and kept in a dict; batches then carry `text_features` and
the frozen encoder is not run in the training step at all once every sentence has been seen (T5-3B is
~5 GB of weights). With `text_cache=False` the encoder's state is a frozen input of the step and runs
inside it under `stop_gradient` on every step.

Synthetic data (`config.synthetic.enabled`, the demo): a Ref-YouTube-VOS tree of moving shapes is written
to `<workdir>/data/raw` and built into `<workdir>/data/tfds` unless already there.
"""

import copy
import functools
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from refsam_jax.model import groups as model_groups
from refsam_jax.model.refsam import RefSAM, build_refsam, encode_text, sam_config_for
from refsam_jax.train import loop
from refsam_jax.train import losses

TRAIN_KEYS = ("frames", "masks", "image_size", "text_mask")


def trainable_rules(model_config: ml_collections.ConfigDict) -> Tuple[Tuple[str, str], ...]:
    """The model's (regex, group) rules for the groups this model config has parameters for."""
    present = {"mlp", "mask_decoder"}
    if model_config.adapter.placement != "none":
        present.add("adapter")
    if model_config.lora.rank > 0:
        present.add("lora")
    if model_config.dense.mode in ("da", "hda"):
        present.add("dense")
    if model_config.tracking.enabled:
        present.add("tracking")
    return tuple((regex, group) for regex, group in model_groups.TRAINABLE_GROUPS if group in present)


def refsam_config() -> ml_collections.ConfigDict:
    """`loop.base_config()` plus every RefSAM key, with the model and data defaults (configs/*.py edit it).

    Keys beyond the base: model (`refsam_jax.model.default_model_config`), data
    (`refsam_jax.data.default_data_config`; data.max_text_length is model.text.max_length), text_cache,
    loss.{dice_weight, focal_weight, focal_alpha, focal_gamma}, synthetic.{enabled, num_videos, num_frames,
    frame_size, seed}, eval.{split, threshold, max_expressions}. Call `trainable_rules(config.model)` once
    the model is set to fill `config.trainable`.
    """
    from refsam_jax.data import default_data_config
    from refsam_jax.model.config import default_model_config

    config = loop.base_config()
    config.model = default_model_config()
    config.data = default_data_config()
    config.model.text.max_length = config.data.get_ref("max_text_length")
    config.text_cache = True
    config.loss = ml_collections.ConfigDict({"dice_weight": 1.0, "focal_weight": 1.0, "focal_alpha": 0.25,
                                             "focal_gamma": 2.0})
    config.synthetic = ml_collections.ConfigDict({"enabled": False, "num_videos": 60, "num_frames": 8,
                                                  "frame_size": (96, 128), "seed": 0})
    config.eval.split = ""  # e.g. 'heldout' (Ref-YouTube-VOS train videos kept out of training); '' = none
    config.eval.threshold = 0.0  # logit threshold, i.e. sigmoid > 0.5
    config.eval.max_expressions = 0  # 0 = all
    return config


def model_config_without_weights(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.model` with no SAM checkpoint: builds random weights (traceable by `nnx.eval_shape`)."""
    model_config = copy.deepcopy(config.model)
    with model_config.unlocked():
        model_config.sam.checkpoint = ""
    return model_config


def _text_encoder_path(config: ml_collections.ConfigDict) -> str:
    path = config.model.text.encoder
    if not path:
        raise ValueError("config.model.text.encoder is empty: name a text encoder folder (a Hugging Face folder "
                         "or a `python -m convert text` output)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.model.text.encoder: folder {path} does not exist")
    return path


def write_synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes and builds the synthetic Ref-YouTube-VOS of `config.synthetic` under `<workdir>/data`."""
    from refsam_jax.data import prepare
    from refsam_jax.data.synthetic import write_ref_youtube_vos

    raw = os.path.join(workdir, "data", "raw")
    if not os.path.exists(os.path.join(raw, "meta_expressions")):
        synthetic = config.synthetic
        write_ref_youtube_vos(raw, num_videos=synthetic.num_videos, num_frames=synthetic.num_frames,
                              size=tuple(synthetic.frame_size), seed=synthetic.seed)
    with config.unlocked():
        config.data.manual_dir = raw
        config.data.data_dir = os.path.join(workdir, "data", "tfds")
    prepare(config)


class TextFeatureCache:
    """(token ids, mask) row -> (features [L, C], mask [L]) of the frozen encoder, filled on first sight."""

    def __init__(self, text_encoder, text_attention_mask: bool):
        self._encoder = text_encoder
        self._text_attention_mask = text_attention_mask
        self._rows: Dict[bytes, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, input_ids: np.ndarray, text_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        keys = [ids.tobytes() + mask.tobytes() for ids, mask in zip(input_ids, text_mask)]
        if any(key not in self._rows for key in keys):
            features, mask = encode_text(self._encoder, input_ids, text_mask,
                                         text_attention_mask=self._text_attention_mask)
            features, mask = np.asarray(features), np.asarray(mask)
            for i, key in enumerate(keys):
                self._rows.setdefault(key, (features[i], mask[i]))
        return (np.stack([self._rows[key][0] for key in keys]), np.stack([self._rows[key][1] for key in keys]))


def make_loss_fn(config: ml_collections.ConfigDict, text_encoder: Callable[[], Any] = lambda: None):
    """`(model, batch, text=None) -> (loss, metrics)`: text features come from the batch (`text_features`),
    or, when the text encoder's state `text` is given, from `text_encoder()` run on `input_ids`."""
    dtype = loop.compute_dtype(config)

    def loss_fn(model: RefSAM, batch: Mapping[str, jax.Array], text: Optional[nnx.State] = None):
        if text is None:
            features, mask = batch["text_features"], batch["text_mask"]
        else:
            features, mask = encode_text(text_encoder(), batch["input_ids"], batch["text_mask"],
                                         text_attention_mask=config.model.text_attention_mask, state=text)
        logits, _ = model(batch["frames"].astype(dtype), features.astype(dtype), mask)
        return losses.refsam_loss(logits, batch["masks"], batch["image_size"], dice_weight=config.loss.dice_weight,
                                  focal_weight=config.loss.focal_weight, focal_alpha=config.loss.focal_alpha,
                                  focal_gamma=config.loss.focal_gamma)

    return loss_fn


def build_refsam_task(config: ml_collections.ConfigDict, workdir: str) -> loop.Task:
    """The RefSAM task of a training config (configs/refytvos.py lists the keys)."""
    from refsam_jax.data import make_train_loader
    from refsam_jax.text import TextTokenizer, load_text_encoder

    text_path = _text_encoder_path(config)
    if config.data.max_text_length != config.model.text.max_length:
        raise ValueError(f"config.data.max_text_length ({config.data.max_text_length}) and "
                         f"config.model.text.max_length ({config.model.text.max_length}) differ")
    image_size = sam_config_for(config.model).img_size
    if config.data.image_size != image_size:
        raise ValueError(f"config.data.image_size is {config.data.image_size} but SAM "
                         f"{config.model.sam.model_type} takes {image_size}-pixel inputs")
    tokenizer = TextTokenizer(text_path, config.model.text.max_length)
    model_config = model_config_without_weights(config)
    text = {}  # The encoder, loaded after the loop's checks.

    def load_other_frozen() -> Mapping[str, Any]:
        encoder = load_text_encoder(text_path, config.model.text.max_length, expected_width=config.model.text.width)
        text["encoder"] = encoder
        if config.text_cache:
            text["cache"] = TextFeatureCache(encoder, config.model.text_attention_mask)
            return {}
        return {"text": encoder.state}

    def load_pretrained(model: RefSAM) -> None:
        if config.model.sam.checkpoint:
            from refsam_jax.sam.build import load_sam
            sam = load_sam(config.model.sam.checkpoint, config=sam_config_for(config.model))
            nnx.update(model.sam, nnx.state(sam))
            logging.info("loaded SAM from %s", config.model.sam.checkpoint)

    def prepare_batch(batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        prepared = {key: batch[key] for key in TRAIN_KEYS}
        if config.text_cache:
            prepared["text_features"], prepared["text_mask"] = text["cache"](batch["input_ids"], batch["text_mask"])
        else:
            prepared["input_ids"] = batch["input_ids"]
        return prepared

    def make_train_iterator(shard_index: int, shard_count: int):
        if config.synthetic.enabled:
            write_synthetic_data(config, workdir)
        return iter(make_train_loader(config, tokenizer, seed=config.seed, shard_index=shard_index,
                                      shard_count=shard_count))

    def evaluate(model: RefSAM) -> Dict[str, float]:
        return evaluate_heldout(model, text["encoder"], config)

    return loop.Task(
        build_model=lambda: build_refsam(model_config, seed=config.seed),
        loss_fn=make_loss_fn(config, lambda: text["encoder"]),
        make_train_iterator=make_train_iterator,
        model_config=config.model.to_dict(),
        global_batch_size=config.data.batch_size,
        frames_per_clip=config.data.num_frames,
        load_pretrained=load_pretrained,
        load_other_frozen=load_other_frozen,
        prepare_batch=prepare_batch,
        evaluate=evaluate if config.eval.split else None)


def preprocess_video(frames, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """uint8 frames `T x [H, W, 3]` -> SAM input `[T, S, S, 3]` and the resized (h, w)."""
    from refsam_jax.data.pipeline import normalize_and_pad
    from refsam_jax.sam.transforms import resize_longest_side

    resized = np.stack([resize_longest_side(frame, size) for frame in frames])
    return normalize_and_pad(resized, size), resized.shape[1:3]


@functools.partial(jax.jit, static_argnums=0)
def _run_chunk(graphdef: nnx.GraphDef, state: nnx.State, frames, features, mask, track_state):
    """RefSAM on `frames [1, T, S, S, 3]` from `track_state` (compiled once per model and T)."""
    return nnx.merge(graphdef, state)(frames, features, mask, track_state)


def evaluate_heldout(model: RefSAM, text_encoder, config: ml_collections.ConfigDict) -> Dict[str, float]:
    """J, F and J&F over every (video, expression) of `config.eval.split` (Ref-YouTube-VOS local protocol).

    Each video runs online in chunks of `config.data.num_frames` frames carrying the track state; logits
    are post-processed to the original size and thresholded at `config.eval.threshold`. It runs on this
    host's first device.
    """
    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.data.pipeline import clean_sentence
    from refsam_jax.evaluation.metrics import boundary_f, jaccard
    from refsam_jax.sam.transforms import postprocess_masks

    size, chunk = config.data.image_size, config.data.num_frames
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, jax.local_devices()[0])  # One device: no mesh shardings in the loop below.
    j_scores, f_scores = [], []
    for count, item in enumerate(iterate_eval_videos(config.data.name, config.data.data_dir, config.eval.split)):
        if config.eval.max_expressions and count >= config.eval.max_expressions:
            break
        frames, (h, w) = preprocess_video(item.frames, size)
        ids, mask = text_encoder.tokenizer([clean_sentence(item.sentence)])
        features, mask = encode_text(text_encoder, ids, mask, text_attention_mask=config.model.text_attention_mask)
        num_frames = len(frames)
        padded = np.concatenate([frames, np.repeat(frames[-1:], (-num_frames) % chunk, axis=0)])
        track_state, logits = model.initial_track_state(1), []
        for start in range(0, len(padded), chunk):
            chunk_logits, track_state = _run_chunk(graphdef, state, padded[None, start:start + chunk], features,
                                                   mask, track_state)
            logits.append(chunk_logits[0])
        logits = jnp.concatenate(logits)[:num_frames]
        predictions = np.asarray(postprocess_masks(logits, (h, w), item.frames[0].shape[:2], size)) > \
            config.eval.threshold
        j_scores.append(float(jaccard(item.masks, predictions).mean()))
        f_scores.append(float(boundary_f(item.masks, predictions).mean()))
    if not j_scores:
        raise ValueError(f"no expression to evaluate in split {config.eval.split!r} of {config.data.name}")
    j, f = float(np.mean(j_scores)), float(np.mean(f_scores))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "expressions": float(len(j_scores))}
