"""Training input pipeline on grain: records -> T-frame clips -> SAM-preprocessed, tokenised batches.

Config keys (`config.data.*`; `default_data_config()` returns all of them with their defaults):
  name              'ref_youtube_vos' | 'ref_davis17' | 'refcoco/refcoco' | 'refcoco/refcoco_plus' |
                    'refcoco/refcocog', or several joined by ',' (concatenated, e.g. RefSAM's
                    RefCOCO+/+/g pre-training mixture)
  data_dir          TFDS data dir holding the built datasets
  manual_dir        raw layout(s), only for `prepare`; for several names, ','-joined in the same order
  split             split to train on ('train')
  on_error          'raise' | 'skip': bad raw input while building (see builders/common.py)
  heldout_fraction, heldout_seed   Ref-YouTube-VOS held-out split (0.05 and 0: builder config
                    'default'; other values get their own config, see `builder_config`)
  num_frames        T, frames per clip (RefCOCO images are repeated T times)
  image_size        S, the model's input side (1024 for SAM, small for tests)
  max_text_length   L, tokens per sentence (padded/truncated, with a mask)
  expressions_per_clip   K: sentences trained on one clip (1-8). K > 1 adds a K axis (below): the frames are
                    encoded once for K sentences, of other objects of the record first
  max_crop_size     0, or the reference's protocol: frames first shrunk to at most this many px per side
                    (RefSAM: 512), then resized up to S (augment.resize_clip)
  batch_size        global batch; each of `shard_count` hosts yields batch_size // shard_count
  num_epochs        None: repeat forever
  shuffle           shuffle records (per epoch, seeded)
  max_offset        local neighbours at anchor -/+ U{1..max_offset} (REFSAM_SPEC §5.2)
  max_resample      anchor redraws when the object is absent from the clip
  num_workers       grain worker processes (0: in the calling process)
  worker_buffer_size, read_threads, read_prefetch   grain prefetching
  augment.*         enabled, flip_prob, crop_prob, crop_min_fraction, resize_sizes,
                    color_jitter_prob, brightness, contrast, saturation, hue, per_frame (augment.py)

`make_loader` is the pipeline without the per-record transform (records -> sampler -> this host's rows ->
batches); RefSAM's clips (`ClipTransform`, `make_train_loader`) and SAM's frames (`object_masks.py`) plug
their transform into it.

Sampling unit: one record (a video, or a RefCOCO image) per sampler index; each draw then picks an
expression (sentence) uniformly in it and, for videos, an anchor frame uniformly (resampled if the
object is absent from the clip). With K = expressions_per_clip > 1, K - 1 more sentences of the record go
with the same clip, those of objects not yet chosen first (the contrast "same frames, another sentence,
another mask"); a record with fewer than K sentences repeats its first with `expression_valid` False.
RefSAM enumerates (expression, frame) pairs instead, which weighs videos by expressions x frames; drawing
per record keeps an epoch one pass over the videos and needs no scan of the data to build an index.
All randomness of a sample comes from the rng grain's IndexSampler derives from (seed, position in
the stream), so each example depends only on those two. Which positions share a batch depends on
`num_workers` (each grain worker batches its own share), so a run is reproduced with the same seed
and worker count; the iterator state (`iterator.get_state()` / `set_state()`, or orbax via
`grain.checkpoint.CheckpointSave` / `CheckpointRestore`) resumes it.

Batch (numpy, static shapes; B = batch_size // shard_count):
  frames       float32 [B, T, S, S, 3]  SAM-normalised, zero-padded bottom/right
  masks        float32 [B, T, S, S]     target at model-input resolution, 0 in padding
  image_size   int32   [B, T, 2]        (h, w) of the resized content before padding
  input_ids    int32   [B, L];  text_mask bool [B, L]
  source_index, record_index, expression_index   int32 [B]  (which dataset, record and sentence)
  frame_indices int32  [B, T] indices into the video's frame list;  flipped bool [B]
With K > 1: masks [B, K, T, S, S], input_ids / text_mask [B, K, L], expression_index / text_truncated
[B, K], and expression_valid bool [B, K].
"""

import bisect
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from refsam_jax.data import augment as augment_lib
from refsam_jax.data import builders, sampling, synthetic
from refsam_jax.data.builders.common import decode_label_map, decode_rgb, decode_text
from refsam_jax.sam import transforms
from refsam_jax.text.tokenizer import clean_caption

VIDEO_BUILDERS = ("ref_youtube_vos", "ref_davis17")
PER_EXPRESSION = ("masks", "input_ids", "text_mask", "text_truncated", "expression_index")
MAX_EXPRESSIONS_PER_CLIP = 8  # a clip's K masks travel through augmentation as the bits of one uint8 map


def default_data_config() -> ml_collections.ConfigDict:
    """Every key the pipeline reads, with defaults for RefSAM's Ref-YouTube-VOS training."""
    return ml_collections.ConfigDict(
        {
            "name": "ref_youtube_vos",
            "data_dir": "",
            "manual_dir": "",
            "split": "train",
            "on_error": "raise",
            "heldout_fraction": 0.05,
            "heldout_seed": 0,
            "num_frames": 3,
            "image_size": 1024,
            "max_text_length": 32,
            "expressions_per_clip": 1,
            "max_crop_size": 0,
            "batch_size": 2,
            "num_epochs": ml_collections.FieldReference(None, field_type=int),
            "shuffle": True,
            "max_offset": 3,
            "max_resample": 10,
            "num_workers": 0,
            "worker_buffer_size": 2,
            "read_threads": 2,
            "read_prefetch": 8,
            "augment": {
                "enabled": True,
                "flip_prob": 0.5,
                "crop_prob": 0.5,
                "crop_min_fraction": 0.64,
                "resize_sizes": (288, 320, 352, 392, 416, 448, 480, 512),
                "color_jitter_prob": 0.7,
                "brightness": 0.5,
                "contrast": 0.5,
                "saturation": 0.5,
                "hue": 0.1,
                "per_frame": False,
            },
        }
    )


def _data_config(config) -> Any:
    """Accepts the full training config (with `.data`) or the data config itself."""
    return config.data if "data" in config else config


def dataset_names(data) -> List[str]:
    return [n.strip() for n in str(data.name).split(",") if n.strip()]


def builder_config(name: str, data) -> Optional[Any]:
    """The Ref-YouTube-VOS builder config for non-default held-out settings, else None."""
    if builders.parse_name(name)[0] != "ref_youtube_vos":
        return None
    fraction, seed = float(data.heldout_fraction), int(data.heldout_seed)
    default = builders.RefYoutubeVos.BUILDER_CONFIGS[0]
    if (fraction, seed) == (default.heldout_fraction, default.heldout_seed):
        return None
    name = f"heldout_{fraction:g}_seed_{seed}".replace(".", "p")
    return builders.RefYoutubeVosConfig(name=name, heldout_fraction=fraction, heldout_seed=seed)


def prepare(config) -> Dict[str, Dict[str, int]]:
    """Builds every dataset of `config.data.name` from `manual_dir` into `data_dir`; returns skip counts.

    Run it once (on one host) before training; prepared datasets are not rebuilt.
    """
    data = _data_config(config)
    names = dataset_names(data)
    manual_dirs = [m.strip() for m in str(data.manual_dir).split(",")]
    if len(manual_dirs) != len(names):
        raise ValueError(f"data.manual_dir has {len(manual_dirs)} entries for {len(names)} datasets in data.name")
    skipped = {}
    for name, manual_dir in zip(names, manual_dirs):
        builder = builders.build(
            name, manual_dir, data.data_dir, on_error=data.on_error, config=builder_config(name, data)
        )
        skipped[name] = builder.skipped
    return skipped


def default_synthetic_config() -> ml_collections.ConfigDict:
    """`config.synthetic` of the training configs: a synthetic Ref-YouTube-VOS (`write_synthetic_data`) when
    `enabled`, with `num_videos` train videos of `num_frames` frames of `frame_size` (h, w), from `seed`."""
    return ml_collections.ConfigDict({"enabled": False, "num_videos": 60, "num_frames": 8, "frame_size": (96, 128),
                                      "seed": 0})


def write_synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the synthetic Ref-YouTube-VOS of `config.synthetic` to `<workdir>/data/raw` (unless there) and
    builds it into `<workdir>/data/tfds`; points `config.data.manual_dir` / `data_dir` at them."""
    raw = os.path.join(workdir, "data", "raw")
    if not os.path.exists(os.path.join(raw, "meta_expressions")):
        options = config.synthetic
        synthetic.write_ref_youtube_vos(raw, num_videos=options.num_videos, num_frames=options.num_frames,
                                        size=tuple(options.frame_size), seed=options.seed)
    with config.unlocked():
        config.data.manual_dir = raw
        config.data.data_dir = os.path.join(workdir, "data", "tfds")
    prepare(config)


class RecordSource:
    """The records of `split` of one or more built datasets, concatenated (grain random-access source)."""

    def __init__(self, names: Sequence[str], data_dir: str, split: str, configs: Sequence[Optional[Any]]):
        self.names = list(names)
        self.kinds = ["video" if builders.parse_name(n)[0] in VIDEO_BUILDERS else "image" for n in names]
        self._sources = [builders.open_split(n, data_dir, split, config=c) for n, c in zip(names, configs)]
        self._starts = np.cumsum([0] + [len(s) for s in self._sources]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        source = bisect.bisect_right(self._starts, index) - 1
        return {
            "source_index": source,
            "record_index": index - self._starts[source],
            "record": self._sources[source][index - self._starts[source]],
        }

    def __repr__(self) -> str:
        return f"RecordSource(names={self.names}, num_records={len(self)})"


def normalize_and_pad(frames: Sequence[np.ndarray], size: int, colour_ops: Optional[Sequence] = None) -> np.ndarray:
    """T uint8 `[h, w, 3]` -> float32 `[T, S, S, 3]`: SAM's (x - mean) / std, zeros bottom/right.

    `colour_ops`: per frame, the colour jitter ops (augment.jitter_colour) applied first.
    """
    floats = np.stack([augment_lib.jitter_colour(frame, colour_ops[t]) if colour_ops is not None and colour_ops[t]
                       else frame.astype(np.float32) for t, frame in enumerate(frames)])
    return transforms.normalize_and_pad(floats, size)


class ClipTransform(grain.transforms.RandomMap):
    """Record -> one training example (see the module docstring); `rng` comes from the sampler."""

    def __init__(self, data, tokenizer, names: Sequence[str], kinds: Sequence[str]):
        self._data = data
        self._tokenizer = tokenizer
        self._names = list(names)
        self._kinds = list(kinds)

    def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, np.ndarray]:
        record = element["record"]
        where = f"{self._names[element['source_index']]} split {self._data.split!r} record {element['record_index']}"
        video = record.get("video_id", record.get("image_id"))
        try:
            return self._example(rng, element, record)
        except Exception as e:
            raise RuntimeError(f"input pipeline failed on {where} ({decode_text(video)}): {e}") from e

    def _choose(self, rng: np.random.Generator, objects: Sequence[int]) -> Tuple[List[int], np.ndarray]:
        """K positions into `objects` (the object of each candidate sentence) and whether each is valid: one
        uniformly, then the others in random order, those of objects not chosen yet first; the first again
        (invalid) when there are fewer than K."""
        count = int(self._data.expressions_per_clip)
        first = int(rng.integers(len(objects)))
        chosen = [first]
        if count > 1:
            others = [int(i) for i in rng.permutation(len(objects)) if i != first]
            seen = {objects[first]}
            while others and len(chosen) < count:
                pick = next((i for i in others if objects[i] not in seen), others[0])
                others.remove(pick)
                chosen.append(pick)
                seen.add(objects[pick])
        valid = np.arange(count) < len(chosen)
        return chosen + [first] * (count - len(chosen)), valid

    def _video_clip(self, rng: np.random.Generator, record) -> Tuple[List[np.ndarray], np.ndarray, List[int],
                                                                      np.ndarray, np.ndarray]:
        expressions = record["expressions"]
        usable = [i for i, obj_id in enumerate(expressions["obj_id"]) if obj_id >= 0]
        if not usable or len(record["label_maps"]) == 0:
            raise ValueError("no expression with ground truth: this split cannot be used for training")
        chosen, valid = self._choose(rng, [int(expressions["obj_id"][i]) for i in usable])
        chosen = [usable[i] for i in chosen]
        obj_ids = [int(expressions["obj_id"][i]) for i in chosen]
        row = record["object_ids"].tolist().index(obj_ids[0])
        _, indices = sampling.sample_clip(
            rng,
            record["object_present"][row],
            int(self._data.num_frames),
            int(self._data.max_offset),
            int(self._data.max_resample),
        )
        decoded = {int(i): (decode_rgb(record["frames"][i]), decode_label_map(record["label_maps"][i]))
                   for i in set(indices.tolist())}
        frames = [decoded[int(i)][0] for i in indices]
        labels = np.stack([decoded[int(i)][1] for i in indices])
        masks = np.stack([labels == obj_id for obj_id in obj_ids])
        return frames, masks, chosen, valid, indices

    def _image_clip(self, rng: np.random.Generator, record) -> Tuple[List[np.ndarray], np.ndarray, List[int],
                                                                      np.ndarray, np.ndarray]:
        sentences = record["sentences"]
        chosen, valid = self._choose(rng, [int(i) for i in sentences["object_index"]])
        image = decode_rgb(record["image"])
        num_frames = int(self._data.num_frames)
        masks = np.stack([
            np.broadcast_to(decode_label_map(record["objects"]["mask"][int(sentences["object_index"][i])]) > 0,
                            (num_frames,) + image.shape[:2]) for i in chosen])
        return [image] * num_frames, masks, chosen, valid, np.zeros([num_frames], np.int32)

    def _sentence(self, record, kind: str, expression: int) -> str:
        sentences = record["expressions"] if kind == "video" else record["sentences"]
        return decode_text(sentences["sentence"][expression])

    def _example(self, rng: np.random.Generator, element, record) -> Dict[str, np.ndarray]:
        """One clip with K = expressions_per_clip sentences; the K axis is dropped when K = 1."""
        kind = self._kinds[element["source_index"]]
        clip = self._video_clip if kind == "video" else self._image_clip
        frames, masks, expressions, valid, indices = clip(rng, record)  # masks bool [K, T, H, W]
        size = int(self._data.image_size)
        aug = augment_lib.sample_clip_augment(rng, masks[0], self._data.augment) if self._data.augment.enabled else None
        shifts = np.arange(len(masks), dtype=np.uint8)[:, None, None, None]
        bits = np.sum(masks.astype(np.uint8) << shifts, axis=0, dtype=np.uint8)  # nearest resizing keeps each bit
        frames, bits, (h, w) = augment_lib.resize_clip(frames, bits, size, aug, int(self._data.max_crop_size))
        sentences = [clean_caption(self._sentence(record, kind, e)) for e in expressions]
        if aug is not None and aug.flip:
            sentences = [augment_lib.swap_left_right(sentence) for sentence in sentences]
        input_ids, text_mask = self._tokenizer(sentences)
        length = int(self._data.max_text_length)
        input_ids, text_mask = np.asarray(input_ids), np.asarray(text_mask)
        if input_ids.shape != (len(sentences), length) or text_mask.shape != (len(sentences), length):
            raise ValueError(f"tokenizer returned shapes {input_ids.shape}, {text_mask.shape}; expected "
                             f"({len(sentences)}, {length}) each")
        padded_masks = np.zeros([len(expressions), len(frames), size, size], dtype=np.float32)
        padded_masks[:, :, :h, :w] = (bits[None] >> shifts) & 1
        example = {
            "frames": normalize_and_pad(frames, size, aug.colour_ops if aug is not None else None),
            "masks": padded_masks,
            "image_size": np.tile(np.asarray([h, w], np.int32), (len(frames), 1)),
            "input_ids": input_ids.astype(np.int32),
            "text_mask": text_mask.astype(bool),
            "text_truncated": self._tokenizer.lengths(sentences) > length,
            "source_index": np.int32(element["source_index"]),
            "record_index": np.int32(element["record_index"]),
            "expression_index": np.asarray(expressions, np.int32),
            "frame_indices": np.asarray(indices, np.int32),
            "flipped": np.bool_(aug is not None and aug.flip),
        }
        if len(expressions) == 1:
            return {key: value[0] if key in PER_EXPRESSION else value for key, value in example.items()}
        return {**example, "expression_valid": valid}


class GlobalBatchSlice:
    """This host's rows of every global batch of one sample stream (a grain sampler).

    Global batch k holds stream positions k*B .. k*B + B - 1 (B = the global batch size); host p of P reads
    rows p*B/P .. (p+1)*B/P - 1 of it. The hosts read disjoint records that together make exactly the
    batches of a 1-host run, augmented alike: a sample's randomness comes from its stream position.
    """

    def __init__(self, stream, shard_index: int, shard_count: int, local_batch: int, start_batch: int = 0):
        self._stream, self._shard_index, self._shard_count = stream, shard_index, shard_count
        self._local_batch, self._start_batch = local_batch, start_batch

    def __repr__(self) -> str:  # grain checks a restored iterator's sampler by its repr.
        return (f"GlobalBatchSlice({self._stream!r}, shard_index={self._shard_index}, "
                f"shard_count={self._shard_count}, local_batch={self._local_batch}, start_batch={self._start_batch})")

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        batch, row = divmod(index, self._local_batch)
        batch += self._start_batch
        position = (batch * self._shard_count + self._shard_index) * self._local_batch + row
        metadata = self._stream[position]
        return grain.RecordMetadata(index=index, record_key=metadata.record_key, rng=metadata.rng)


def make_loader(
    config,
    transform: Callable[[RecordSource], grain.transforms.RandomMap],
    *,
    seed: int,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    start_batch: int = 0,
) -> grain.DataLoader:
    """A grain DataLoader of this host's rows of every global batch of `transform(source)` examples, one per
    record drawn from the records of `config.data` (`data.name`, `data.split`, shuffled per epoch).

    `transform(source)` makes the example of a record (a `grain.transforms.RandomMap`). `seed`: a non-negative
    32-bit int; same seed -> same batches. shard_index/shard_count default to jax.process_index()/
    jax.process_count(): each host reads its rows of every global batch (`GlobalBatchSlice`). `start_batch`: the
    first global batch (a run resumed on another number of hosts). `iter(loader)` gives an iterator with
    get_state()/set_state() for checkpoints.
    """
    data = _data_config(config)
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if data.batch_size % shard_count:
        raise ValueError(f"data.batch_size {data.batch_size} is not divisible by the {shard_count} hosts")
    names = dataset_names(data)
    source = RecordSource(names, data.data_dir, data.split, [builder_config(n, data) for n in names])
    stream = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.NoSharding(),
        shuffle=bool(data.shuffle),
        num_epochs=data.num_epochs,
        seed=seed,
    )
    local_batch = data.batch_size // shard_count
    operations = [transform(source), grain.transforms.Batch(batch_size=local_batch, drop_remainder=True)]
    if data.num_workers and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags; use their defaults.
    return grain.DataLoader(
        data_source=source,
        sampler=GlobalBatchSlice(stream, shard_index, shard_count, local_batch, start_batch),
        shard_options=grain.sharding.NoSharding(),  # The sampler reads this host's rows already.
        operations=operations,
        worker_count=int(data.num_workers),
        worker_buffer_size=int(data.worker_buffer_size),
        read_options=grain.ReadOptions(
            num_threads=int(data.read_threads), prefetch_buffer_size=int(data.read_prefetch)
        ),
    )


def make_train_loader(
    config,
    tokenizer,
    *,
    seed: int,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    start_batch: int = 0,
) -> grain.DataLoader:
    """RefSAM's training batches (see the module docstring) for this host: `make_loader` with `ClipTransform`.

    `tokenizer`: a `text.TextTokenizer` with `max_length` = data.max_text_length (a batch's `text_truncated`
    marks the sentences it cut).
    """
    data = _data_config(config)
    if not 1 <= int(data.expressions_per_clip) <= MAX_EXPRESSIONS_PER_CLIP:
        raise ValueError(f"data.expressions_per_clip must be in 1..{MAX_EXPRESSIONS_PER_CLIP}, got "
                         f"{data.expressions_per_clip}")
    return make_loader(data, lambda source: ClipTransform(data, tokenizer, source.names, source.kinds), seed=seed,
                       shard_index=shard_index, shard_count=shard_count, start_batch=start_batch)
