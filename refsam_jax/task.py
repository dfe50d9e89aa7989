"""RefSAM as a training task: its config, model, frozen text encoder, data, loss and held-out evaluation.

    loop.train(config, workdir, RefSamTask)     # or train_and_evaluate(config, workdir)

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
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from refsam_jax import paths, processes
from refsam_jax.data import default_data_config, make_train_loader, write_synthetic_data
from refsam_jax.data.pipeline import builder_config, default_synthetic_config
from refsam_jax.evaluation.video import evaluate_ytvos_heldout
from refsam_jax.inference import LoadedModel
from refsam_jax.model import groups
from refsam_jax.model.config import default_model_config, validate_model_config
from refsam_jax.model.refsam import RefSAM, build_refsam, encode_text, sam_config_for, text_padding_mask
from refsam_jax.param_rules import path_to_str
from refsam_jax.sam.build import load_sam
from refsam_jax.segmenter import Segmenter
from refsam_jax.text import TextEncoder, TextTokenizer, load_text_encoder
from refsam_jax.train import loop, losses
from refsam_jax.train.optimizer import TrainableSplit

TRAIN_KEYS = ("frames", "masks", "image_size", "text_mask")


def refsam_config() -> ml_collections.ConfigDict:
    """`loop.base_config()` plus every RefSAM key, with the model and data defaults (configs/*.py edit it).

    Keys beyond the base: task ("refsam"), model (`refsam_jax.model.config.default_model_config`), data
    (`refsam_jax.data.default_data_config`; data.max_text_length is model.text.max_length), text_cache,
    loss.{dice_weight, focal_weight, focal_alpha, focal_gamma}, synthetic.{enabled, num_videos, num_frames,
    frame_size, seed}, eval.{split, threshold, max_expressions, short_side, davis_shared_track}. An empty
    `config.trainable` (the default) means the paper's groups for the modules `config.model` builds, derived
    at run time (`derive`), so that every `--config.model.*` override and sweep value is honoured.
    """
    config = loop.base_config()
    config.task = "refsam"  # what train.py trains (refsam_jax.sam_task's configs say "sam")
    config.model = default_model_config()
    config.data = default_data_config()
    config.model.text.max_length = config.data.get_ref("max_text_length")
    config.text_cache = True
    config.loss = ml_collections.ConfigDict({"dice_weight": 1.0, "focal_weight": 1.0, "focal_alpha": 0.25,
                                             "focal_gamma": 2.0})
    config.synthetic = default_synthetic_config()
    config.eval.split = ""  # e.g. 'heldout' (Ref-YouTube-VOS train videos kept out of training); '' = none
    config.eval.threshold = 0.0  # logit threshold, i.e. sigmoid > 0.5
    config.eval.max_expressions = 0  # 0 = all
    config.eval.short_side = 0  # inference resizes frames to this shortest side before SAM's resize; 0 = off
    config.eval.davis_shared_track = False  # Ref-DAVIS17: an object's expressions share one track state
    config.frozen_on_purpose = ""  # regex: parameters RefSAM adds that may stay frozen (the official adapters)
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


class TextFeatureCache:
    """(token ids, mask) row -> (features [L, C], mask [L]) of the frozen encoder, filled on first sight. With
    `padding="longest"` the mask is the one `text_padding_mask` made for the row's batch."""

    def __init__(self, text_encoder: TextEncoder, text_attention_mask: bool, padding: str = "max_length"):
        self._encoder = text_encoder
        self._text_attention_mask = text_attention_mask
        self._padding = padding
        self._rows: Dict[bytes, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, input_ids: np.ndarray, text_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        keys = [ids.tobytes() + mask.tobytes() for ids, mask in zip(input_ids, text_mask)]
        if any(key not in self._rows for key in keys):
            features, mask = encode_text(self._encoder, input_ids, text_mask,
                                         text_attention_mask=self._text_attention_mask, padding=self._padding)
            features, mask = np.asarray(features), np.asarray(mask)
            for i, key in enumerate(keys):
                self._rows.setdefault(key, (features[i], mask[i]))
        return (np.stack([self._rows[key][0] for key in keys]), np.stack([self._rows[key][1] for key in keys]))


def refsam_loss(config: ml_collections.ConfigDict, model: RefSAM, batch: Mapping[str, jax.Array],
                text_encoder: Optional[TextEncoder] = None, text: Optional[nnx.State] = None):
    """`(loss, metrics)` of `model` on a batch (K sentences per clip when it has `expression_valid`). Text
    features come from the batch (`text_features`), or, when the text encoder's state `text` is given, from
    `text_encoder` run on `input_ids`."""
    if text is None:
        features, mask = batch["text_features"], batch["text_mask"]
    else:
        ids, mask = batch["input_ids"], batch["text_mask"]
        features, mask = encode_text(text_encoder, ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1]),
                                     text_attention_mask=config.model.text_attention_mask,
                                     padding=config.model.text.padding, state=text)
        features, mask = features.reshape(*ids.shape, -1), mask.reshape(ids.shape)
    dtype = loop.compute_dtype(config)
    logits, _ = model(batch["frames"].astype(dtype), features.astype(dtype), mask)
    return losses.refsam_loss(logits, batch["masks"], batch["image_size"], batch.get("expression_valid"),
                              dice_weight=config.loss.dice_weight, focal_weight=config.loss.focal_weight,
                              focal_alpha=config.loss.focal_alpha, focal_gamma=config.loss.focal_gamma)


def evaluate_heldout(model: RefSAM, text_encoder: TextEncoder, config: ml_collections.ConfigDict
                     ) -> Dict[str, float]:
    """J, F and J&F over the expressions of `config.eval.split` of the run's Ref-YouTube-VOS (local protocol):
    the inference engine in chunks of `config.data.num_frames` frames, masks = logits > `config.eval.threshold`."""
    loaded = LoadedModel(model, text_encoder, config, step=-1, source="the model in training")
    segmenter = Segmenter(loaded, threshold=config.eval.threshold, chunk_size=config.data.num_frames,
                          expression_batch=1, devices=jax.local_devices()[:1])  # Each process: its videos.
    result = evaluate_ytvos_heldout(segmenter, config.data.data_dir, split=config.eval.split,
                                    builder_config=builder_config("ref_youtube_vos", config.data),
                                    max_expressions=config.eval.max_expressions, progress=False).summary()
    return {"J": result["J"], "F": result["F"], "J&F": result["JF"], "expressions": float(result["num_expressions"]),
            "truncated_expressions": float(len(text_encoder.tokenizer.truncated))}


def derive(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills what a RefSAM config derives from its final values (after overrides), in place: the trainable
    rules from `config.model` when `config.trainable` is empty. Returns `config`."""
    if not config.trainable:
        with config.unlocked():
            config.trainable = groups.trainable_rules(config.model)
    return config


class RefSamTask(loop.Task):
    """The RefSAM task of a training config (configs/refytvos.py lists the keys)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.text_path = _text_encoder_path(config)
        if config.data.max_text_length != config.model.text.max_length:
            raise ValueError(f"config.data.max_text_length ({config.data.max_text_length}) and "
                             f"config.model.text.max_length ({config.model.text.max_length}) differ")
        image_size = sam_config_for(config.model).img_size
        if config.data.image_size != image_size:
            raise ValueError(f"config.data.image_size is {config.data.image_size} but SAM "
                             f"{config.model.sam.model_type} takes {image_size}-pixel inputs")
        self.tokenizer = TextTokenizer(self.text_path, config.model.text.max_length)
        self.model_config = config.model.to_dict()
        self.model_config_defaults = default_model_config().to_dict()  # For checkpoints older than a model key.
        self.global_batch_size = config.data.batch_size
        self.frames_per_clip = config.data.num_frames
        self.text_encoder: Optional[TextEncoder] = None  # Loaded after the loop's checks.
        self.text_cache: Optional[TextFeatureCache] = None
        self.sentences_read = self.sentences_truncated = 0

    def build_model(self) -> RefSAM:
        return build_refsam(model_config_without_weights(self.config), seed=self.config.seed,
                            dtype=loop.compute_dtype(self.config))

    def check_split(self, split: TrainableSplit) -> None:
        frozen = [path_to_str(path) for path, variable in nnx.to_flat_state(split.frozen)
                  if isinstance(variable, nnx.Param)]
        on_purpose = self.config.get("frozen_on_purpose", "")
        groups.check_added_parameters_train([p for p in frozen if not (on_purpose and re.search(on_purpose, p))])

    def load_pretrained(self, model: RefSAM) -> None:
        checkpoint = self.config.model.sam.checkpoint
        if checkpoint:
            nnx.update(model.sam, nnx.state(load_sam(checkpoint, config=sam_config_for(self.config.model))))
            logging.info("loaded SAM from %s", checkpoint)

    def load_other_frozen(self) -> Mapping[str, Any]:
        text = self.config.model.text
        self.text_encoder = load_text_encoder(self.text_path, text.max_length, expected_width=text.width)
        if self.config.text_cache:
            self.text_cache = TextFeatureCache(self.text_encoder, self.config.model.text_attention_mask,
                                               self.config.model.text.padding)
            return {}
        return {"text": self.text_encoder.state}

    def loss_fn(self, model: RefSAM, batch: Mapping[str, jax.Array], text: Optional[nnx.State] = None):
        return refsam_loss(self.config, model, batch, self.text_encoder, text)

    def prepare_batch(self, batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.sentences_read += batch["text_truncated"].size
        self.sentences_truncated += int(np.sum(batch["text_truncated"]))
        prepared = {key: batch[key] for key in TRAIN_KEYS + ("expression_valid",) if key in batch}
        # The mask of the padding the model sees; with text.padding="longest", each device's rows are padded to
        # their longest sentence (the rows of a host go to its devices in equal consecutive blocks).
        shape = batch["input_ids"].shape  # [B, L] or [B, K, L]
        input_ids, text_mask = batch["input_ids"].reshape(-1, shape[-1]), batch["text_mask"].reshape(-1, shape[-1])
        text_mask = np.asarray(text_padding_mask(
            text_mask, text_attention_mask=self.config.model.text_attention_mask,
            padding=self.config.model.text.padding, group_size=len(text_mask) // jax.local_device_count()))
        if self.text_cache is not None:
            features, text_mask = self.text_cache(input_ids, text_mask)
            prepared["text_features"] = features.reshape(*shape, -1)
        else:
            prepared["input_ids"] = batch["input_ids"]
        prepared["text_mask"] = text_mask.reshape(shape)
        return prepared

    def train_iterator(self, shard_index: int, shard_count: int, first_step: int = 0):
        if self.config.synthetic.enabled:
            processes.process_zero_first(lambda: write_synthetic_data(self.config, self.workdir),
                                         "synthetic data written")
        return iter(make_train_loader(self.config, self.tokenizer, seed=self.config.seed, shard_index=shard_index,
                                      shard_count=shard_count, start_batch=first_step))

    def host_metrics(self) -> Dict[str, float]:
        """The fraction of this host's training sentences (so far) longer than config.data.max_text_length."""
        return {"text/truncated_fraction": self.sentences_truncated / max(self.sentences_read, 1)}

    def evaluate(self, model: RefSAM) -> Optional[Dict[str, float]]:
        if not self.config.eval.split:
            return None
        return evaluate_heldout(model, self.text_encoder, self.config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> loop.TrainSummary:
    """Trains RefSAM as `config` says (see configs/refytvos.py); relative paths are taken from the working
    directory, and every path the config names must exist."""
    validate_model_config(config.model)
    paths.check_paths_exist(paths.absolute_paths(config))
    return loop.train(derive(config), workdir, RefSamTask)
