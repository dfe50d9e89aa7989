"""A trained model, ready to segment: `refsam_jax.load(path)` and `Segmenter.segment(video, sentences)`.

    seg = refsam_jax.load("exported/demo")          # an exported folder, or a training workdir
    masks = seg.segment("clip.mp4", "the red circle")            # bool [T, H, W] at the video's size
    masks = seg.segment(frames, ["a cat", "the dog"])            # [N, T, H, W]; frames: uint8 [T, H, W, 3]

An exported folder (`python -m refsam_jax.export`) holds everything: `export.json`, the run's `config.json`
with no absolute paths, `model/` (the whole RefSAM state: SAM with the trained weights merged, the new
modules) and `text/` (the text encoder with its tokenizer). It loads from any working directory, on any
machine. A workdir loads as `predict` and `evaluate` load it (its config.json names the backbones' folders).
"""

import json
import os
from typing import Iterator, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from refsam_jax import inference, paths
from refsam_jax.model.refsam import build_refsam
from refsam_jax.text import load_text_encoder
from refsam_jax.trees import cast_floating, named_dtype

EXPORT_FILE = "export.json"
CONFIG_FILE = "config.json"
MODEL_DIR = "model"
TEXT_DIR = "text"
EXPORT_FORMAT = 1

Video = Union[str, np.ndarray, inference.VideoFrames]


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, EXPORT_FILE))


def load_exported(path: str, dtype: str = "float32") -> inference.LoadedModel:
    """The model and text encoder of an exported folder (parameters restored as float32; `dtype`: the compute
    dtype of SAM's image encoder)."""
    path = paths.absolute(os.fspath(path))
    with open(os.path.join(path, EXPORT_FILE)) as f:
        record = json.load(f)
    if record.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}/{EXPORT_FILE}: export format {record.get('format')!r}, this version reads "
                         f"{EXPORT_FORMAT}")
    config = inference.load_config_file(os.path.join(path, CONFIG_FILE))
    with config.unlocked():
        config.model.text.encoder = os.path.join(path, TEXT_DIR)
    abstract = nnx.eval_shape(lambda: build_refsam(config.model, seed=config.seed,
                                                   dtype=named_dtype(dtype)))
    graphdef, abstract_state = nnx.split(abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(os.path.join(path, MODEL_DIR), abstract_state)
    state = cast_floating(state, jnp.float32)
    text = config.model.text
    text_encoder = load_text_encoder(text.encoder, text.max_length, expected_width=text.width)
    return inference.LoadedModel(nnx.merge(graphdef, state), text_encoder, config, int(record["step"]),
                                 f"{path} (step {record['step']})")


class Segmenter:
    """Segments the objects that sentences refer to in videos; see the module docstring.

    Masks are `logits > threshold` (default `inference.DEFAULT_THRESHOLD`, sigmoid > 0.5), at the frames' size;
    `threshold=None` takes the run's `config.eval.threshold` (as the predict and evaluate commands do).
    `devices` (default: every local device) share each chunk of frames (`inference.VideoSegmenter`). The
    predict and evaluate commands, and the evaluation during training, all segment through this class.
    `short_side`: frames first resized to this shortest side (0: off); None takes the run's
    `config.eval.short_side`, so a model trained for the official protocol is run with it.
    """

    def __init__(self, loaded: inference.LoadedModel, *, threshold: Optional[float] = inference.DEFAULT_THRESHOLD,
                 chunk_size: int = 8, expression_batch: int = 4, devices=None, short_side: Optional[int] = None):
        self.loaded = loaded
        evaluation = loaded.config.get("eval", {}) if loaded.config is not None else {}
        if threshold is None:
            threshold = evaluation.get("threshold", inference.DEFAULT_THRESHOLD)
        self.threshold = float(threshold)
        if short_side is None:
            short_side = int(evaluation.get("short_side", 0))
        self.runner = inference.VideoSegmenter(loaded.model, loaded.text_encoder, chunk_size=chunk_size,
                                               expression_batch=expression_batch, devices=devices,
                                               short_side=short_side)

    def stream(self, video: Video, sentences: Sequence[str],
               chains: Optional[Sequence[Sequence[int]]] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """`(t, logits float32 [N, H, W])` frame by frame (constant memory in the video's length); `chains`:
        sentences that share one track state (`inference.VideoSegmenter.segment`)."""
        return self.runner.segment(_frames(video), list(sentences), chains)

    def segment(self, video: Video, sentences: Union[str, Sequence[str]], *,
                return_logits: bool = False) -> np.ndarray:
        """bool masks `[T, H, W]` for one sentence, `[N, T, H, W]` for a list of N (float32 logits with
        `return_logits`). `video`: a folder of frames, a video file, or uint8 frames `[T, H, W, 3]`."""
        single = isinstance(sentences, str)
        outputs = [logits for _, logits in self.stream(video, [sentences] if single else sentences)]
        stacked = np.stack(outputs, axis=1)  # [N, T, H, W]
        if not return_logits:
            stacked = stacked > self.threshold
        return stacked[0] if single else stacked


def _frames(video):
    """A path (folder or video file), uint8 `[T, H, W, 3]` frames, or an opened `inference.VideoFrames`."""
    if isinstance(video, (str, os.PathLike)):
        return inference.open_video(paths.absolute(os.fspath(video)))
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise inference.VideoInputError(f"a video array must be uint8 [T, H, W, 3], got {video.dtype} "
                                            f"{video.shape}")
        return list(video)
    return video


def load(path: str, *, threshold: float = inference.DEFAULT_THRESHOLD, chunk_size: int = 8,
         expression_batch: int = 4, dtype: str = "float32", devices=None, config=None) -> Segmenter:
    """A `Segmenter` (see its arguments) for an exported folder or a training workdir (or its checkpoints
    folder; `config`: the training config, when the workdir has no config.json). `dtype="bfloat16"` runs
    SAM's image encoder, the bulk of the work, with bfloat16 matmuls."""
    path = paths.absolute(os.fspath(path))
    if is_export(path):
        loaded = load_exported(path, dtype)
    else:
        checkpoint_dir, workdir = inference.checkpoint_location(path)
        loaded = inference.load_model(inference.training_config(config, workdir), checkpoint_dir, dtype=dtype)
    return Segmenter(loaded, threshold=threshold, chunk_size=chunk_size, expression_batch=expression_batch,
                     devices=devices)
