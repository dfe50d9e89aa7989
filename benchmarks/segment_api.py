"""Frames per second of the one-call API, `refsam_jax.load(...).segment(video, sentences)`, on the demo model.

    python benchmarks/segment_api.py [--workdir demo_out] [--frames 8 16 32 64] [--expressions 1 4]

The model is a trained run or export (`--workdir`) or, without one, the demo config's model as training
initialises it (same cost). Each figure is the best of `--repeats` calls after a warm-up call (compilation
excluded), with SAM's image encoder in float32 and in bfloat16, with the mask IoU of bfloat16 against float32 on the same video. A flat
per-frame time from 8 to 64 frames shows the chunked inference costs the same per frame however long the
video; N expressions against 1 shows what the shared image encoder saves. Prints one table and, with `--json`,
writes the rows.
"""

import argparse
import importlib.resources
import json
import time

import numpy as np

from refsam_jax import inference
from refsam_jax.segmenter import Segmenter, load
from refsam_jax.trees import DTYPES

SENTENCES = ["a red circle", "the blue square on the left", "a small green triangle", "the big yellow star",
             "the shape moving right", "the one at the bottom", "a purple circle", "the square"]


def demo_model(dtype: str) -> inference.LoadedModel:
    config = inference.load_config_file(str(importlib.resources.files("refsam_jax.configs") / "demo.py"))
    return inference.load_model(config, dtype=dtype)


def time_segment(segmenter: Segmenter, video: np.ndarray, sentences, repeats: int):
    """(best seconds, masks) of `segmenter.segment(video, sentences)`, after one warm-up call."""
    masks = segmenter.segment(video, sentences)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        masks = segmenter.segment(video, sentences)
        best = min(best, time.perf_counter() - start)
    return best, masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="", help="a training workdir or export (default: untrained demo model)")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--expressions", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"), help="frame size")
    parser.add_argument("--chunk", type=int, default=8, help="frames per model call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args(argv)

    models = {dtype: load(args.workdir, dtype=dtype).loaded if args.workdir else demo_model(dtype)
              for dtype in DTYPES}
    rng = np.random.default_rng(0)
    rows = []
    for expressions in args.expressions:
        sentences = [SENTENCES[i % len(SENTENCES)] for i in range(expressions)]
        segmenters = {dtype: Segmenter(loaded, chunk_size=args.chunk, expression_batch=expressions)
                      for dtype, loaded in models.items()}
        for frames in args.frames:
            video = rng.integers(0, 256, (frames, *args.size, 3), dtype=np.uint8)
            timed = {dtype: time_segment(seg, video, sentences, args.repeats) for dtype, seg in segmenters.items()}
            full, half = timed["float32"][1], timed["bfloat16"][1]
            iou = float((full & half).sum() / max((full | half).sum(), 1))
            for dtype, (seconds, _) in timed.items():
                rows.append({"expressions": expressions, "frames": frames, "dtype": dtype, "seconds": seconds,
                             "frames_per_s": frames / seconds, "ms_per_frame": 1e3 * seconds / frames,
                             "bf16_mask_iou": iou})
    print(f"model: {models['float32'].source}; frames {args.size[0]}x{args.size[1]}, chunks of {args.chunk}")
    print(f"{'expressions':>11} {'frames':>6} {'dtype':>9} {'frames/s':>9} {'ms/frame':>9} {'bf16 IoU':>9}")
    for row in rows:
        print(f"{row['expressions']:>11} {row['frames']:>6} {row['dtype']:>9} {row['frames_per_s']:>9.1f} "
              f"{row['ms_per_frame']:>9.2f} {row['bf16_mask_iou']:>9.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
