"""SAM (promptable segmentation) training data: one annotated frame of a video record, every object in it, and a
prompt for each object sampled from its mask. Class-agnostic: the sentences are not used.

Each draw (`ObjectMasksTransform`, rng from the sampler as in `pipeline.py`) picks a frame uniformly among the
video's frames that show an object (frames without objects are never drawn; a record with none gives an example
whose slots are all invalid, i.e. it is skipped by the loss), takes up to K of its objects, augments the frame as
RefSAM's clips are augmented (`augment.py`, a clip of one frame) and samples per object:
  point   uniformly among the object's pixels (a positive click);
  box     its tight box (x0, y0, x1, y1), each coordinate moved by N(0, (box_noise_fraction * side)^2) noise
          clipped to +-box_noise_max pixels at 1024 (scaled to S), as in the SAM paper;
  use_box True with probability `box_fraction` (the prompt is the box, else the point).

Example (numpy, static shapes; batched by grain to a leading B; K = data.max_masks, S = data.image_size,
m = the mask decoder's output side, 4g):
  frames      float32 [S, S, 3]  SAM-normalised, zero-padded bottom/right
  masks       bool    [K, m, m]  each object at the decoder's resolution: S/m x S/m blocks at least half covered
  valid       bool    [K]        False for empty slots and objects the crop removed
  image_size  int32   [2]        (h, w) of the resized content before padding
  points      float32 [K, 2]     (x, y) in input pixels
  boxes       float32 [K, 4]     (x0, y0, x1, y1) in input pixels
  use_box     bool    [K]
  seed        int32   []         for what the training step samples itself (refinement clicks)
  record_index, frame_index  int32 []
"""

from typing import Any, Dict, Optional, Sequence

import grain
import ml_collections
import numpy as np
from scipy import ndimage

from refsam_jax.data import augment as augment_lib
from refsam_jax.data import pipeline
from refsam_jax.data.builders.common import decode_label_map, decode_rgb, decode_text

REFERENCE_SIZE = 1024  # SAM's input side, at which `box_noise_max` is given


def sample_point(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """(x, y) float32 `[2]` of a pixel drawn uniformly from the non-empty bool mask `[H, W]`."""
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(xs)))
    return np.asarray([xs[i], ys[i]], np.float32)


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) float32 `[4]` of the non-empty bool mask `[H, W]`, inclusive pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def noisy_box(rng: np.random.Generator, mask: np.ndarray, image_size, noise_fraction: float,
              max_noise: float) -> np.ndarray:
    """The box of `mask` with N(0, (noise_fraction * side)^2) noise per coordinate, clipped to +-`max_noise`
    pixels, then to the (h, w) `image_size` content; float32 `[4]` (x0, y0, x1, y1), x0 <= x1, y0 <= y1."""
    box = bounding_box(mask)
    sides = np.asarray([box[2] - box[0], box[3] - box[1]] * 2, np.float32) + 1.0
    noise = np.clip(rng.normal(size=4) * noise_fraction * sides, -max_noise, max_noise)
    h, w = image_size
    box = np.clip(box + noise, 0.0, np.asarray([w - 1, h - 1, w - 1, h - 1], np.float32))
    return np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])]).astype(np.float32)


def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) float32 `[2]` of the non-empty bool mask's most interior pixel (maximum of the distance to the
    background, the image border counting as background): the standard single-click evaluation prompt."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.asarray([x, y], np.float32)


def downsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool `[S, S]` -> bool `[size, size]`: the S/size x S/size blocks at least half covered."""
    side = mask.shape[-1]
    if side % size:
        raise ValueError(f"the mask side {side} is not a multiple of the output side {size}")
    block = side // size
    return mask.reshape(size, block, size, block).mean(axis=(1, 3)) >= 0.5


class ObjectMasksTransform(grain.transforms.RandomMap):
    """Video record -> one SAM training example (see the module docstring); `rng` comes from the sampler."""

    def __init__(self, data: ml_collections.ConfigDict, prompts: ml_collections.ConfigDict, mask_size: int,
                 names: Sequence[str]):
        self._data, self._prompts, self._mask_size, self._names = data, prompts, int(mask_size), list(names)

    def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, np.ndarray]:
        record = element["record"]
        try:
            return self._example(rng, element, record)
        except Exception as e:
            where = f"{self._names[element['source_index']]} split {self._data.split!r} record " \
                    f"{element['record_index']}"
            raise RuntimeError(f"input pipeline failed on {where} ({decode_text(record['video_id'])}): {e}") from e

    def _example(self, rng: np.random.Generator, element, record) -> Dict[str, np.ndarray]:
        if len(record["label_maps"]) == 0:
            raise ValueError("the video has no ground-truth masks: this split cannot be used for training")
        object_ids = np.asarray(record["object_ids"])
        present = np.asarray(record["object_present"], bool).reshape(len(object_ids), len(record["frames"]))
        with_objects = np.nonzero(present.any(axis=0))[0]
        frame_index = int(rng.choice(with_objects)) if len(with_objects) else 0
        max_masks, size = int(self._data.max_masks), int(self._data.image_size)
        object_ids = rng.permutation(object_ids[present[:, frame_index]])[:max_masks]
        frame = decode_rgb(record["frames"][frame_index])
        labels = decode_label_map(record["label_maps"][frame_index])[None]
        aug = (augment_lib.sample_clip_augment(rng, np.isin(labels, object_ids), self._data.augment)
               if self._data.augment.enabled else None)
        frames, labels, (h, w) = augment_lib.resize_clip([frame], labels, size, aug)
        padded = np.zeros([size, size], labels.dtype)
        padded[:h, :w] = labels[0]

        prompts = self._prompts
        max_noise = float(prompts.box_noise_max) * size / REFERENCE_SIZE
        masks = np.zeros([max_masks, self._mask_size, self._mask_size], bool)
        valid, use_box = np.zeros([max_masks], bool), np.zeros([max_masks], bool)
        points, boxes = np.zeros([max_masks, 2], np.float32), np.zeros([max_masks, 4], np.float32)
        for k, obj_id in enumerate(object_ids):
            mask = padded == obj_id
            if not mask.any():  # Cropped out, or thinner than a pixel after resizing.
                continue
            valid[k] = True
            masks[k] = downsample_mask(mask, self._mask_size)
            points[k] = sample_point(rng, mask)
            boxes[k] = noisy_box(rng, mask, (h, w), float(prompts.box_noise_fraction), max_noise)
            use_box[k] = rng.random() < float(prompts.box_fraction)
        return {
            "frames": pipeline.normalize_and_pad(frames, size, aug.colour_ops if aug is not None else None)[0],
            "masks": masks,
            "valid": valid,
            "image_size": np.asarray([h, w], np.int32),
            "points": points,
            "boxes": boxes,
            "use_box": use_box,
            "seed": np.int32(rng.integers(2**31 - 1)),
            "record_index": np.int32(element["record_index"]),
            "frame_index": np.int32(frame_index),
        }


def make_object_masks_loader(config: ml_collections.ConfigDict, mask_size: int, *, seed: int,
                             shard_index: Optional[int] = None, shard_count: Optional[int] = None,
                             start_batch: int = 0) -> grain.DataLoader:
    """This host's batches of SAM training examples of `config.data` with `config.prompts` (`pipeline.make_loader`,
    same sampling, sharding and checkpointable iterator as RefSAM's clips); `mask_size`: the decoder's output side."""
    data = config.data
    return pipeline.make_loader(
        data, lambda source: ObjectMasksTransform(data, config.prompts, mask_size, source.names), seed=seed,
        shard_index=shard_index, shard_count=shard_count, start_batch=start_batch)
