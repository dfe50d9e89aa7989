"""Video inference: expressions + a stream of frames -> per-frame mask logits at the original size.

    segmenter = VideoSegmenter(model, text_encoder, chunk_size=8, expression_batch=4)
    for t, logits in segmenter.segment(open_video("clip.mp4"), ["a red car", "the dog on the left"]):
        masks = logits > DEFAULT_THRESHOLD      # bool [E, H0, W0] for frame t

Protocol (REFSAM_SPEC.md §6.1, with the fixes of §9.5 and §9.11):
- Each sentence is cleaned (`clean_caption`, as in training) and run through the frozen text encoder once.
  With `text.padding="longest"` (the official code's padding) a sentence sees no padding, as when run alone.
- Frames are resized with PIL so the longest side is the model size S (SAM's ResizeLongestSide), then
  normalised and zero-padded to S x S on the device. The official scripts first resize to a 360-pixel
  short side (spec §6.1, §9.13): `short_side=360` (config `eval.short_side`) does that too.
- Frames go through the model in chunks of `chunk_size`; the last chunk is padded with blank frames
  whose outputs are dropped and which do not advance the track. Every compiled program has static
  shapes independent of the video's length and size, except the final resize to the original size
  (compiled once per padded size, `sam.transforms.padded_size`). The image encoder runs once per frame,
  whatever the number of expressions.
- Each expression has its own track state, carried from chunk to chunk. The official DAVIS script shares
  one across the 4 expressions of an object (spec §9.5): `segment(..., chains=...)` does that too.
  Expressions are decoded in batches of `expression_batch` (the last batch padded by repeating an
  expression).
- Low-res logits `[4g, 4g]` are upsampled as SAM does (`postprocess_masks`: bilinear to S, crop the
  content, bilinear to the original size), as one linear map per axis.
- Precision: the model's own (`load_model(..., dtype="bfloat16")` builds SAM's image encoder with bfloat16
  matmuls, the bulk of the work; weights, the rest of the model and the logits stay float32).
  Devices: all local ones by default (`VideoSegmenter`).
- Binarisation: `logit > DEFAULT_THRESHOLD` = 0.0, i.e. sigmoid > 0.5, the threshold the training loss
  implies. The official Ref-YouTube-VOS script uses logit > 0.01 and the Ref-DAVIS script effectively
  logit > 0.1 (spec §9.12); both are reachable through `threshold` arguments.
Memory is constant in the video length: frames are read one chunk ahead, and only one chunk of
logits at the original size exists at a time.
"""

import dataclasses
import json
import os
import runpy
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from refsam_jax import paths
from refsam_jax.checkpoint import load_trained_params, warn_filled_defaults
from refsam_jax.model.config import default_model_config, fill_model_defaults
from refsam_jax.model.refsam import RefSAM, build_refsam, encode_text
from refsam_jax.sam.transforms import (
    apply_postprocess,
    check_image,
    normalize,
    postprocess_matrices,
    resize_longest_side,
    resize_shortest_side,
)
from refsam_jax.text import clean_caption, load_text_encoder
from refsam_jax.trees import named_dtype
from refsam_jax.visualize import ffmpeg_subprocess

DEFAULT_THRESHOLD = 0.0
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class VideoInputError(ValueError):
    """A video that cannot be read as given; the message names the file or folder and the problem."""


# ---------------------------------------------------------------------------------------------------------
# Reading videos.


def read_frame(path: str) -> np.ndarray:
    """An image file -> uint8 `[H, W, 3]` RGB; raises VideoInputError naming `path` if it cannot be read."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoInputError(f"cannot read frame {path}: {e}") from e


@dataclasses.dataclass
class VideoFrames:
    """A video as a re-iterable stream of uint8 `[H, W, 3]` frames, read lazily from disk.

    Attributes:
      source: the folder or video file.
      names: one name per frame (file stems for a folder, `00000`, `00001`, ... for a video file).
      fps: the file's frame rate, None for a folder of frames.
    """

    source: str
    names: List[str]
    fps: Optional[float] = None
    _files: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._files is not None:
            for path in self._files:
                yield read_frame(path)
            return
        with ffmpeg_subprocess():
            reader = imageio.get_reader(self.source, format="ffmpeg")
        try:
            for t, frame in enumerate(reader):
                if t >= len(self.names):
                    break
                yield np.asarray(frame)[..., :3].astype(np.uint8)
        finally:
            reader.close()


def _check_frame_sizes(frame_paths: Sequence[str]) -> None:
    """Raises VideoInputError naming the first frame file that cannot be opened or differs in size from the
    first (image headers only: no decoding)."""
    first = None
    for frame_path in frame_paths:
        try:
            with Image.open(frame_path) as image:
                size = image.size
        except (OSError, SyntaxError, ValueError) as e:
            raise VideoInputError(f"cannot read frame {frame_path}: {e}") from e
        if first is None:
            first = (frame_path, size)
        elif size != first[1]:
            raise VideoInputError(f"frame {frame_path} is {size[0]}x{size[1]} but {first[0]} is "
                                  f"{first[1][0]}x{first[1][1]}: all frames of a video must have one size")


def open_video(path: str) -> VideoFrames:
    """A folder of frames (jpg/png/..., sorted by name) or a video file (.mp4, ...) -> VideoFrames."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted((name for name in os.listdir(path) if name.lower().endswith(FRAME_EXTENSIONS)),
                       key=paths.natural_key)
        if not files:
            raise VideoInputError(f"no frames in {path}: expected image files ({', '.join(FRAME_EXTENSIONS)})")
        stems = [os.path.splitext(name)[0] for name in files]
        if len(set(stems)) != len(stems):
            duplicates = sorted({s for s in stems if stems.count(s) > 1})
            raise VideoInputError(f"{path} holds several files per frame name: {', '.join(duplicates[:5])}")
        frame_paths = [os.path.join(path, name) for name in files]
        _check_frame_sizes(frame_paths)
        return VideoFrames(path, stems, None, frame_paths)
    if not os.path.exists(path):
        raise VideoInputError(f"video {path} does not exist")
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        raise VideoInputError(f"{path} is neither a folder of frames nor a video file "
                              f"({', '.join(VIDEO_EXTENSIONS)})")
    try:
        with ffmpeg_subprocess():
            reader = imageio.get_reader(path, format="ffmpeg")
            try:
                fps = float(reader.get_meta_data().get("fps") or 0) or None
                count = reader.count_frames()
            finally:
                reader.close()
    except Exception as e:  # imageio/ffmpeg raise OSError, RuntimeError, IndexError, ... on bad files.
        raise VideoInputError(f"cannot read video {path}: {type(e).__name__}: {e}") from e
    if count < 1:
        raise VideoInputError(f"video {path} has no frames")
    return VideoFrames(path, [f"{t:05d}" for t in range(count)], fps)


# ---------------------------------------------------------------------------------------------------------
# The model programs.


def _encode_chunk(graphdef: nnx.GraphDef, state: nnx.State, frames: jax.Array, content: jax.Array):
    """uint8 `[T, S, S, 3]` (content top-left, zeros elsewhere), content (h, w) -> the frames' embeddings."""
    model = nnx.merge(graphdef, state)
    size = frames.shape[1]
    rows = jnp.arange(size)[:, None] < content[0]
    cols = jnp.arange(size)[None, :] < content[1]
    x = jnp.where((rows & cols)[None, :, :, None], normalize(frames.astype(jnp.float32)), 0.0)
    return model.encode_frames(x)


def _decode_chunk(graphdef: nnx.GraphDef, state: nnx.State, embedding: jax.Array, interm: Sequence[jax.Array],
                  valid: jax.Array, text_features: jax.Array, text_mask: jax.Array, present: jax.Array, track_state):
    """Decodes T frames for B chains of K expressions, carrying one track per chain: embeddings `[T, g, g, C]`,
    valid `[T]` bool, text `[K, B, L, C_t]`, `[K, B, L]`, present `[K, B]` bool -> (low-res logits
    `[T, K, B, 4g, 4g]`, track state). At each frame the chain's expressions are decoded in order, each from
    the state the previous one left; a padded frame or an absent expression leaves the state as it is."""
    model = nnx.merge(graphdef, state)
    num_links, num_chains = text_features.shape[:2]
    words, sentence = model.prompts(text_features.reshape(num_links * num_chains, *text_features.shape[2:]),
                                    text_mask.reshape(num_links * num_chains, -1))
    words = words.reshape(num_links, num_chains, *words.shape[1:])
    sentence = sentence.reshape(num_links, num_chains, -1)

    def per_chain(x):  # [...] -> [B, ...], the same frame for every chain
        return jnp.broadcast_to(x[None], (num_chains,) + x.shape)

    def step(track, inputs):
        frame_embedding, frame_interm, is_valid = inputs
        frame_embedding, frame_interm = per_chain(frame_embedding), [per_chain(x) for x in frame_interm]
        outputs = []
        for k in range(num_links):
            logits, new_track = model.decode_frame(frame_embedding, frame_interm, words[k], sentence[k],
                                                   text_mask[k], track)
            advance = is_valid & present[k]
            track = jax.tree.map(lambda new, old: jnp.where(advance.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                                 new_track, track)
            outputs.append(logits)
        return track, jnp.stack(outputs)

    track_state, logits = jax.lax.scan(step, track_state, (embedding, list(interm), valid))
    return logits, track_state


# Module-level so that models of one architecture (e.g. untrained and trained) share the compiled programs.
_encode_jit = jax.jit(_encode_chunk, static_argnums=0)
_decode_jit = jax.jit(_decode_chunk, static_argnums=0)


def compiled_programs() -> int:
    """How many programs the segmenters have compiled (encode + decode + resize), for tests."""
    return _encode_jit._cache_size() + _decode_jit._cache_size() + apply_postprocess._cache_size()


@dataclasses.dataclass
class ExpressionBatch:
    """Text of up to `expression_batch` chains of K expressions (K = 1: independent expressions); empty slots
    repeat an expression of the batch and are marked absent."""

    features: jax.Array  # [K, B, L, C_t]
    mask: jax.Array  # [K, B, L] bool
    present: jax.Array  # [K, B] bool
    slots: np.ndarray  # [K, B] int: the sentence index in each slot, -1 where absent


class VideoSegmenter:
    """Runs a RefSAM model over videos; see the module docstring for the protocol.

    Runs on `devices` (default: all local devices) with the weights replicated: each chunk's frames are
    split over the devices for the image encoder, and each batch of expressions too for the decoder when
    `expression_batch` is a multiple of the device count (else every device decodes all of them).

    Args:
      model: the RefSAM model (its weights are read once, here).
      text_encoder: the frozen `refsam_jax.text.TextEncoder` the model was trained with.
      chunk_size: frames per model call (static), rounded up to a multiple of the device count.
      expression_batch: expressions (chains of them, with `chains`) decoded together (static).
      devices: the devices to run on.
      short_side: 0, or the side frames are first resized to (their shortest side; the official 360).
    """

    def __init__(self, model: RefSAM, text_encoder, *, chunk_size: int = 8, expression_batch: int = 4,
                 devices: Optional[Sequence[jax.Device]] = None, short_side: int = 0):
        if chunk_size < 1 or expression_batch < 1:
            raise ValueError(f"chunk_size and expression_batch must be >= 1, got {chunk_size}, {expression_batch}")
        if not isinstance(short_side, int) or short_side < 0:
            raise ValueError(f"short_side must be a non-negative integer (0: off), got {short_side!r}")
        self.short_side = short_side
        if text_encoder.width != model.text_width:
            raise ValueError(f"the text encoder at {text_encoder.source} has width {text_encoder.width} but the "
                             f"model was built for text.width={model.text_width}")
        self.model = model
        self.text_encoder = text_encoder
        devices = list(devices or jax.local_devices())
        self.chunk_size = -(-int(chunk_size) // len(devices)) * len(devices)
        self.expression_batch = int(expression_batch)
        self.image_size = int(model.sam.config.img_size)
        mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
        split = self.expression_batch % len(devices) == 0
        self._expressions = self._split if split else self._replicated  # [B, ...]: track states
        self._chains = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "batch")) if split
                        else self._replicated)  # [K, B, ...]: text
        self._graphdef, state = nnx.split(model)
        # One sharding (restored checkpoints come with the training mesh's) and no weak types, so every model
        # of one architecture (untrained, trained, ...) shares the compiled programs.
        self._state = jax.device_put(jax.tree.map(_local_copy, state), self._replicated)

    def encode_text(self, sentences: Sequence[str],
                    chains: Optional[Sequence[Sequence[int]]] = None) -> List[ExpressionBatch]:
        """Cleans and encodes each sentence once; batches of `expression_batch` chains (`segment`)."""
        if isinstance(sentences, str) or not sentences:
            raise ValueError("sentences must be a non-empty list of strings")
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str) or not sentence.strip():
                raise ValueError(f"expression {i} is empty: {sentence!r}")
        chains = _check_chains(chains, len(sentences))
        cleaned = [clean_caption(s) for s in sentences]
        links = max(len(chain) for chain in chains)
        batches = []
        for start in range(0, len(chains), self.expression_batch):
            group = chains[start:start + self.expression_batch]
            slots = np.full((links, self.expression_batch), -1)
            for b, chain in enumerate(group):
                slots[:len(chain), b] = chain
            filled = np.where(slots >= 0, slots, group[-1][-1])
            input_ids, attention_mask = self.text_encoder.tokenizer([cleaned[i] for i in filled.ravel()])
            features, mask = encode_text(self.text_encoder, jnp.asarray(input_ids), jnp.asarray(attention_mask),
                                         text_attention_mask=self.model.text_attention_mask,
                                         padding=self.model.text_padding)
            features = features.reshape(slots.shape + features.shape[1:])
            mask = mask.reshape(slots.shape + mask.shape[1:])
            batches.append(ExpressionBatch(*jax.device_put((features, mask, slots >= 0), self._chains), slots))
        return batches

    def _prepare_chunk(self, frames: Sequence[np.ndarray], first_index: int,
                       original_size: Optional[Tuple[int, int]]):
        """T <= chunk_size frames -> uint8 `[chunk_size, S, S, 3]`, valid `[chunk_size]`, (h, w), (H0, W0)."""
        batch = np.zeros((self.chunk_size, self.image_size, self.image_size, 3), np.uint8)
        for i, frame in enumerate(frames):
            frame = check_image(frame, f"frame {first_index + i}")
            if original_size is None:
                original_size = frame.shape[:2]
            elif frame.shape[:2] != original_size:
                raise VideoInputError(f"frame {first_index + i} is {frame.shape[1]}x{frame.shape[0]} (WxH) but the "
                                      f"video's first frame is {original_size[1]}x{original_size[0]}")
            if self.short_side:
                frame = resize_shortest_side(frame, self.short_side)
            resized = resize_longest_side(frame, self.image_size)
            batch[i, :resized.shape[0], :resized.shape[1]] = resized
            content = resized.shape[:2]
        valid = np.arange(self.chunk_size) < len(frames)
        return batch, valid, content, original_size

    def segment(self, frames: Iterable[np.ndarray], sentences: Sequence[str],
                chains: Optional[Sequence[Sequence[int]]] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """Yields `(t, logits float32 [E, H0, W0])` for every frame t of `frames` (uint8 `[H0, W0, 3]`, all of one
        size), in order; E = len(sentences). Threshold the logits (e.g. `> DEFAULT_THRESHOLD`) for masks.

        `chains`: None, each sentence its own track state; or lists of sentence indices (each sentence in one)
        whose sentences share one track state, as the official Ref-DAVIS script shares an object's: at every
        frame they are decoded in chain order, each from the state the previous one left (the first from the
        state the last left at the frame before). `expression_batch` chains are decoded together."""
        text = self.encode_text(sentences, chains)
        tracks = [jax.device_put(self.model.initial_track_state(self.expression_batch), self._expressions)
                  for _ in text]
        original_size = matrices = None
        pending = None  # The previous chunk, dispatched but not yet fetched: reading overlaps computing.
        for first, chunk in _chunks(frames, self.chunk_size):
            batch, valid, content, original_size = self._prepare_chunk(chunk, first, original_size)
            if matrices is None:
                matrices = jax.device_put(postprocess_matrices(self.model.sam.config.mask_input_size, content,
                                                               original_size, self.image_size),
                                          self._replicated)
            embedding, interm = jax.device_put(
                _encode_jit(self._graphdef, self._state, jax.device_put(batch, self._split),
                            np.asarray(content, np.int32)), self._replicated)
            outputs = []
            for g, expressions in enumerate(text):
                low_res, tracks[g] = _decode_jit(self._graphdef, self._state, embedding, interm, valid,
                                                 expressions.features, expressions.mask, expressions.present,
                                                 tracks[g])
                outputs.append((apply_postprocess(low_res, *matrices), expressions.slots))
            if pending is not None:
                yield from _fetch(*pending, len(sentences))
            pending = (first, len(chunk), original_size, outputs)
        if pending is None:
            raise VideoInputError("the video has no frames")
        yield from _fetch(*pending, len(sentences))


def _local_copy(x):
    """A weight as an array of this process (a multi-process run's replicated weights: the local replica)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("inference needs whole weights on every process: FSDP-sharded weights of a "
                             "multi-process run must be gathered first")
        x = x.addressable_data(0)
    return jnp.asarray(x, x.dtype)


def _chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[Tuple[int, List[np.ndarray]]]:
    """(index of the first frame, up to `size` frames) for consecutive chunks of the stream."""
    chunk: List[np.ndarray] = []
    first = 0
    for t, frame in enumerate(frames):
        chunk.append(frame)
        if len(chunk) == size:
            yield first, chunk
            first, chunk = t + 1, []
    if chunk:
        yield first, chunk


def _check_chains(chains: Optional[Sequence[Sequence[int]]], count: int) -> List[List[int]]:
    """The chains of `segment` as lists (None: one per sentence); raises ValueError unless every sentence
    index in 0..count-1 is in exactly one non-empty chain."""
    if chains is None:
        return [[i] for i in range(count)]
    chains = [[int(i) for i in chain] for chain in chains]
    if sorted(i for chain in chains for i in chain) != list(range(count)) or not all(chains):
        raise ValueError(f"chains {chains} must hold every sentence index 0..{count - 1} exactly once, in "
                         f"non-empty lists")
    return chains


def _fetch(first: int, count: int, size: Tuple[int, int], outputs: Sequence[Tuple[jax.Array, np.ndarray]],
           num_sentences: int) -> Iterator[Tuple[int, np.ndarray]]:
    """Copies a chunk's logits `[T, K, B, Hp, Wp]` per batch to the host, dropping padded frames, absent slots
    and pixels outside `size`; yields them per frame in sentence order."""
    logits = np.empty((count, num_sentences) + tuple(size), np.float32)
    for x, slots in outputs:
        present = np.flatnonzero(slots.ravel() >= 0)
        x = np.asarray(x)[:count, ..., :size[0], :size[1]]
        logits[:, slots.ravel()[present]] = x.reshape((count, -1) + x.shape[3:])[:, present]
    for i in range(count):
        yield first + i, logits[i]


# ---------------------------------------------------------------------------------------------------------
# Loading a model for inference.

WORKDIR_CONFIG = "config.json"


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """A config file: Python with `get_config()` (optionally `path:arg`), or the JSON a training run saved (a
    RefSAM run's saved before a model key existed gets that key at its default: `with_model_defaults`)."""
    path, _, arg = os.fspath(path).partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.endswith(".json"):
        with open(path) as f:
            try:
                return with_model_defaults(ml_collections.ConfigDict(json.load(f)), path)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
    module = runpy.run_path(path)
    if "get_config" not in module:
        raise ValueError(f"config file {path} has no get_config()")
    return module["get_config"](*([arg] if arg else []))


def with_model_defaults(config: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
    """A RefSAM run's saved config with the model keys added since it was saved at their defaults
    (`refsam_jax.model.config.fill_model_defaults`: a new key defaults to the behaviour from before it), in place;
    logs the keys it fills. Other tasks' configs are returned as they are."""
    if config.get("task", "refsam") == "refsam" and isinstance(config.get("model"), ml_collections.ConfigDict):
        added = fill_model_defaults(config.model)
        if added:
            warn_filled_defaults(source, added)
    return config


def checkpoint_location(path: str) -> Tuple[str, Optional[str]]:
    """A training workdir (holding `checkpoints/`) or a checkpoints folder -> (checkpoints folder, workdir)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), path
    if any(name.isdigit() for name in os.listdir(path)):
        parent = os.path.dirname(path)
        return path, parent if os.path.basename(path) == "checkpoints" else None
    raise FileNotFoundError(f"{path} is neither a training workdir (no checkpoints/ in it) nor a checkpoints "
                            "folder (no <step>/ in it)")


def training_config(config: Optional[ml_collections.ConfigDict], workdir: Optional[str]) -> ml_collections.ConfigDict:
    """The given training config (its relative paths made absolute), else the one the run saved in
    `<workdir>/config.json`."""
    if config is not None:
        return paths.absolute_paths(config)
    saved = os.path.join(workdir, WORKDIR_CONFIG) if workdir else None
    if saved is None or not os.path.isfile(saved):
        raise FileNotFoundError(f"no training config: {saved or 'the checkpoint folder'} has no saved "
                                f"{WORKDIR_CONFIG}; pass --config (the config file the model was trained with)")
    return load_config_file(saved)


@dataclasses.dataclass
class LoadedModel:
    """A RefSAM model ready for inference, its text encoder, its config and the step it was trained for
    (0: untrained, as initialised for training)."""

    model: RefSAM
    text_encoder: Any
    config: ml_collections.ConfigDict
    step: int
    source: str


def load_model(config: ml_collections.ConfigDict, checkpoint_dir: Optional[str] = None, *,
               text_encoder=None, dtype: str = "float32") -> LoadedModel:
    """Builds RefSAM as training does (`config.model`, `config.seed`, SAM from `config.model.sam.checkpoint`)
    and, when `checkpoint_dir` is given, loads the trained parameters of its latest checkpoint.

    Without a SAM checkpoint the frozen SAM weights are the seeded random initialisation, so they equal those
    the run trained with only for the same `config.seed`. A checkpoint saved before a model key existed loads
    when the key has its default in `config` (`checkpoint.check_model_config`). `text_encoder`: reuse one
    already loaded (its compiled forward with it) instead of loading `config.model.text.encoder` again. `dtype`
    ("float32" or "bfloat16"): the compute dtype of SAM's image encoder.
    """
    if text_encoder is None:
        text_encoder = load_text_encoder(config.model.text.encoder, config.model.text.max_length,
                                         expected_width=config.model.text.width)
    model = build_refsam(config.model, seed=config.seed, dtype=named_dtype(dtype))
    step, source = 0, "untrained (initialisation)"
    if checkpoint_dir is not None:
        step = load_trained_params(model, checkpoint_dir, config.model.to_dict(),
                                   model_defaults=default_model_config().to_dict())
        source = f"{checkpoint_dir}/{step}"
    return LoadedModel(model, text_encoder, config, step, source)
