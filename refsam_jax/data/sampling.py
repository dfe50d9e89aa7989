"""Clip sampling of RefSAM/ReferFormer training (REFSAM_SPEC.md §5.2), deterministic given an rng.

A clip of T frames around an anchor f of a video with F annotated frames (indices into the meta's
`frames` list, i.e. the 5-frame-strided annotated frames):
  T = 1: [f];  T = 2: [f, min(F-1, f+U{1..3})];
  T >= 3: f, max(0, f-U{1..3}), min(F-1, f+U{1..3}), then T-3 "global" frames drawn without
  replacement from the frames outside [min, max] of those three (from all frames, or with repeats,
  when too few are left), all sorted. Clamping at the ends may repeat a frame, as in the reference.
If the referred object is absent from every sampled frame, the anchor is drawn again (up to
`max_tries` times); after that the anchor is drawn among the frames that contain the object.
"""

from typing import Tuple

import numpy as np


def clip_indices(
    rng: np.random.Generator, num_video_frames: int, anchor: int, num_frames: int, max_offset: int = 3
) -> np.ndarray:
    """Sorted frame indices int32 `[num_frames]` of a clip around `anchor`."""
    if not 0 <= anchor < num_video_frames:
        raise ValueError(f"anchor {anchor} outside a video of {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    last = num_video_frames - 1
    indices = [anchor]
    if num_frames == 2:
        indices.append(min(last, anchor + int(rng.integers(1, max_offset + 1))))
    elif num_frames >= 3:
        before = int(rng.integers(1, max_offset + 1))
        after = int(rng.integers(1, max_offset + 1))
        indices += [max(0, anchor - before), min(last, anchor + after)]
        needed = num_frames - 3
        if needed:
            outside = [i for i in range(num_video_frames) if i < min(indices) or i > max(indices)]
            if len(outside) >= needed:
                indices += rng.choice(outside, size=needed, replace=False).tolist()
            elif num_video_frames >= needed:
                indices += rng.choice(num_video_frames, size=needed, replace=False).tolist()
            else:
                indices += rng.choice(num_video_frames, size=needed, replace=True).tolist()
    return np.sort(np.asarray(indices, dtype=np.int32))


def sample_clip(
    rng: np.random.Generator, present: np.ndarray, num_frames: int, max_offset: int = 3, max_tries: int = 10
) -> Tuple[int, np.ndarray]:
    """(anchor, indices) of a clip that contains the object in at least one frame.

    `present`: bool `[F]`, whether the referred object has pixels in each annotated frame.
    """
    present = np.asarray(present, dtype=bool)
    if not present.any():
        raise ValueError("the object is absent from every frame of the video")
    num_video_frames = present.shape[0]
    for _ in range(max_tries):
        anchor = int(rng.integers(num_video_frames))
        indices = clip_indices(rng, num_video_frames, anchor, num_frames, max_offset)
        if present[indices].any():
            return anchor, indices
    anchor = int(rng.choice(np.nonzero(present)[0]))
    return anchor, clip_indices(rng, num_video_frames, anchor, num_frames, max_offset)
