"""COCO segmentation -> binary mask, equal to `pycocotools.mask` (no pycocotools needed).

COCO stores a segmentation as polygons (`[[x0, y0, x1, y1, ...], ...]`), as an uncompressed RLE
(`{"counts": [int, ...], "size": [h, w]}`) or as a compressed RLE (`{"counts": "<string>", "size": ...}`).
RLE runs are column-major (Fortran order) and alternate 0-runs and 1-runs, starting with 0s.
`segmentation_to_mask` does what ReferFormer/RefSAM's `ConvertCocoPolysToMask` does with
pycocotools: `frPyObjects` then `decode`, the union over the polygons of one object.
`polygon_to_rle` is a line-by-line port of pycocotools' `rleFrPoly` (maskApi.c), so the rasterised
pixels are the same as the reference's, boundary pixels included.
"""

from typing import Any, List, Sequence

import numpy as np

_SCALE = 5.0  # rleFrPoly rasterises on a 5x finer grid.


def polygon_to_rle(xy: Sequence[float], h: int, w: int) -> List[int]:
    """Polygon `[x0, y0, x1, y1, ...]` -> RLE counts of the filled `[h, w]` mask (pycocotools' rleFrPoly)."""
    k = len(xy) // 2
    x = [int(_SCALE * xy[2 * j] + 0.5) for j in range(k)]
    y = [int(_SCALE * xy[2 * j + 1] + 0.5) for j in range(k)]
    x.append(x[0])
    y.append(y[0])
    # Dense points along the whole upsampled boundary.
    us, vs = [], []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            t = np.arange(dx + 1)
            t = dx - t if flip else t
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            t = np.arange(dy + 1)
            t = dy - t if flip else t
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u = np.concatenate(us) if us else np.zeros([0], np.int64)
    v = np.concatenate(vs) if vs else np.zeros([0], np.int64)
    # Points on the y-boundary, downsampled to the pixel grid.
    changed = np.nonzero(u[1:] != u[:-1])[0] + 1
    u_cur, u_prev, v_cur, v_prev = u[changed], u[changed - 1], v[changed], v[changed - 1]
    xd = (np.where(u_cur < u_prev, u_cur, u_cur - 1) + 0.5) / _SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.where(v_cur < v_prev, v_cur, v_prev) + 0.5) / _SCALE - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    starts = np.sort(np.concatenate([(xd[keep] * h + yd[keep]).astype(np.int64), [h * w]]))
    # Boundary positions -> run lengths, merging empty runs as maskApi.c does.
    diffs = np.diff(starts, prepend=0).tolist()
    counts = [diffs[0]]
    j = 1
    while j < len(diffs):
        if diffs[j] > 0:
            counts.append(diffs[j])
            j += 1
        else:
            j += 1
            if j < len(diffs):
                counts[-1] += diffs[j]
                j += 1
    return counts


def rle_string_to_counts(s: str) -> List[int]:
    """Compressed COCO RLE string -> counts (pycocotools' rleFrString: 6-bit LEB128-like, delta over i-2)."""
    counts: List[int] = []
    p = 0
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """RLE counts -> compressed COCO RLE string (pycocotools' rleToString)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    """RLE counts (column-major, 0-run first) -> bool `[h, w]`."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected h*w = {h}*{w} = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def rle_encode(mask: np.ndarray) -> List[int]:
    """bool `[h, w]` -> RLE counts (column-major, 0-run first), as pycocotools' rleEncode."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.nonzero(flat[1:] != flat[:-1])[0] + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return counts


def segmentation_to_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """A COCO `segmentation` (polygons, RLE or compressed RLE) -> bool `[h, w]` (union of its parts)."""
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) for p in segmentation):
            raise ValueError("polygon segmentation must be a non-empty list of coordinate lists")
        if len(segmentation[0]) <= 4:  # pycocotools would take 4 numbers for a box and fail on a list.
            raise ValueError(f"polygon has {len(segmentation[0])} coordinates, need at least 6")
        mask = np.zeros([h, w], dtype=bool)
        for polygon in segmentation:
            mask |= rle_decode(polygon_to_rle(polygon, h, w), h, w)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", (h, w))]
        if size != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image size {[h, w]}")
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            counts = rle_string_to_counts(counts)
        return rle_decode(counts, h, w)
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")
