"""Segments the objects that sentences refer to in a video; writes masks and an overlay to look at.

    python -m refsam_jax.predict --video clip.mp4 --text "a red circle" [--text "the square" ...] \\
        --checkpoint runs/demo --out out/

`--video` is a folder of frames (jpg/png, in numeric order of their names) or a video file (.mp4, ...).
`--checkpoint` is an exported folder (`python -m refsam_jax.export`), a training workdir or its
`checkpoints/` folder (loaded by `refsam_jax.load`); a workdir's training config comes from `--config` (the
file the model was trained with, `--config.<key>=<value>` overrides allowed) or from `<workdir>/config.json`.
`--random-init` runs an untrained model instead (smoke tests; `--config` defaults to configs/demo.py).

Writes `<out>/<i>_<slug>/<frame>.png` (0/255 masks at the frame size, expression i) and
`<out>/overlay.gif` (+ `overlay.mp4` when ffmpeg works): each expression in its colour, the sentences
below the frame. Masks are `logit > --threshold`, by default the run's `config.eval.threshold` (0, i.e.
sigmoid > 0.5, unless the run set another; see inference.py).
The video is decoded once: masks and overlay are written as the frames come out of the model.
"""

import collections
import importlib.resources
import os
import re
import sys
import time
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
import tqdm
from absl import app, flags
from ml_collections import config_flags

from refsam_jax import cli, inference, paths, visualize
from refsam_jax.evaluation import save_binary_mask_png
from refsam_jax.segmenter import Segmenter, load
from refsam_jax.trees import DTYPES


def define_flags() -> dict:
    """The command line's flags (defined only when run as a program, so importing this module defines none)."""
    return {
        "video": flags.DEFINE_string("video", None, "Folder of frames or a video file."),
        "text": flags.DEFINE_multi_string("text", None, "A referring expression; repeat for several."),
        "checkpoint": flags.DEFINE_string("checkpoint", None,
                                          "Exported folder, training workdir or checkpoints folder."),
        "config": config_flags.DEFINE_config_file("config", None,
                                                  "Training config file (default: <workdir>/config.json)."),
        "random_init": flags.DEFINE_bool("random-init", False, "Use an untrained model (smoke tests)."),
        "out": flags.DEFINE_string("out", None, "Output folder."),
        "threshold": flags.DEFINE_float("threshold", None, "Mask = logit > threshold (default: the run's "
                                        "config.eval.threshold; official: 0.01 / 0.1)."),
        "chunk_size": flags.DEFINE_integer("chunk_size", 8, "Frames per model call."),
        "dtype": flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Compute dtype of SAM's image encoder."),
        "fps": flags.DEFINE_float("fps", None, "Overlay frame rate (default: the video's, or 10 for frames)."),
        "overlay": flags.DEFINE_bool("overlay", True, "Write overlay.gif / overlay.mp4."),
        "gif_max_side": flags.DEFINE_integer("gif_max_side", 480, "Longest side of the GIF's frames."),
        "overlay_min_side": flags.DEFINE_integer("overlay_min_side", 384,
                                                 "A smaller video is enlarged to this long side for the overlay."),
    }


DEMO_CONFIG = str(importlib.resources.files("refsam_jax.configs") / "demo.py")


def slug(text: str, max_length: int = 40) -> str:
    """'A red circle, on the left!' -> 'a-red-circle-on-the-left' (lower case, [a-z0-9-], bounded length)."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return "-".join(words)[:max_length].strip("-") or "expression"


def expression_dirs(out: str, sentences: Sequence[str]) -> List[str]:
    """`<out>/<i>_<slug>` for each sentence."""
    return [os.path.join(out, f"{i}_{slug(s)}") for i, s in enumerate(sentences)]


def _teed(frames: Iterable[np.ndarray], seen: collections.deque) -> Iterator[np.ndarray]:
    """`frames`, each also appended to `seen` (the frames the model has read but not yet answered)."""
    for frame in frames:
        seen.append(frame)
        yield frame


def predict(video, sentences: Sequence[str], out: str, loaded, *, threshold: Optional[float] = None,
            chunk_size: int = 8, expression_batch: Optional[int] = None, fps=None, overlay: bool = True,
            gif_max_side: int = 480, overlay_min_side: int = 384) -> dict:
    """Runs `loaded` (an `inference.LoadedModel`) on the video (a path or an opened `inference.VideoFrames`)
    and writes masks and overlay under `out`, reading the video once.

    `threshold`: masks are `logit > threshold` (None: the run's `config.eval.threshold`). `expression_batch`:
    expressions decoded together (default: all of them). `overlay_min_side`: a smaller video is enlarged to this
    long side for the overlay, so its captions are legible (the masks keep the video's size).

    Returns a summary: frames, seconds, frames/s, output paths, mean foreground fraction per expression, the
    threshold used.
    """
    video = video if isinstance(video, inference.VideoFrames) else inference.open_video(video)
    seg = Segmenter(loaded, threshold=threshold, chunk_size=chunk_size,
                    expression_batch=expression_batch or len(sentences))
    mask_dirs = expression_dirs(out, sentences)
    writer = (visualize.OverlayWriter(os.path.join(out, "overlay"), fps or video.fps or 10.0,
                                      gif_max_side=gif_max_side) if overlay else None)
    foreground = np.zeros(len(sentences))
    frames: collections.deque = collections.deque()
    start = time.perf_counter()
    with tqdm.tqdm(total=len(video), unit="frame", desc="segmenting", file=sys.stderr) as progress:
        for t, logits in seg.stream(_teed(video, frames), sentences):
            masks = logits > seg.threshold
            for mask, folder in zip(masks, mask_dirs):
                save_binary_mask_png(mask, os.path.join(folder, f"{video.names[t]}.png"))
            frame = frames.popleft()
            if writer is not None:
                shown, shown_masks = visualize.enlarge(frame, masks, overlay_min_side)
                writer.add(visualize.add_captions(visualize.overlay_masks(shown, shown_masks), sentences))
            foreground += masks.mean(axis=(1, 2))
            progress.update(1)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start
    summary = {"frames": len(video), "seconds": seconds, "frames_per_s": len(video) / seconds,
               "mask_dirs": mask_dirs, "foreground": (foreground / len(video)).tolist(), "overlay": [],
               "model": loaded.source, "threshold": seg.threshold}
    if writer is not None:
        summary["overlay"] = writer.paths
        if writer.mp4_error:
            summary["mp4_error"] = writer.mp4_error
    return summary


def main(argv, flag_values: dict):
    del argv  # cli.run rejects extra arguments.
    value = {name: holder.value for name, holder in flag_values.items()}
    value.update({name: paths.absolute(value[name]) for name in ("video", "out", "checkpoint") if value[name]})
    sentences = value["text"] or []
    problems = [f"--{name} is required" for name in ("video", "out") if not value[name]]
    if not sentences:
        problems.append("give at least one --text")
    problems += [f"--text number {i} is empty" for i, s in enumerate(sentences) if not s.strip()]
    if value["random_init"] == bool(value["checkpoint"]):
        problems.append("give exactly one of --checkpoint and --random-init")
    if problems:
        raise app.UsageError("; ".join(problems))
    video = inference.open_video(value["video"])  # Fails on a bad video before any model is built.
    if value["random_init"]:
        loaded = inference.load_model(value["config"] or inference.load_config_file(DEMO_CONFIG),
                                      dtype=value["dtype"])
        print("WARNING: --random-init: the model is UNTRAINED; its masks are meaningless.", file=sys.stderr)
    else:
        loaded = load(value["checkpoint"], config=value["config"], dtype=value["dtype"]).loaded
    summary = predict(video, sentences, value["out"], loaded, threshold=value["threshold"],
                      chunk_size=value["chunk_size"], fps=value["fps"], overlay=value["overlay"],
                      gif_max_side=value["gif_max_side"], overlay_min_side=value["overlay_min_side"])
    source = "--threshold" if value["threshold"] is not None else "the run's eval.threshold"
    print(f"model: {summary['model']}; masks: logit > {summary['threshold']:g} ({source})")
    print(f"{summary['frames']} frames in {summary['seconds']:.1f} s, compilation included "
          f"({summary['frames_per_s']:.1f} frames/s)")
    for folder, fraction in zip(summary["mask_dirs"], summary["foreground"]):
        print(f"masks: {folder}/  (foreground {100 * fraction:.1f}% of the pixels)")
    for path in summary["overlay"]:
        print(f"overlay: {path}")
    if "mp4_error" in summary:
        print(f"no MP4 overlay: {summary['mp4_error']}", file=sys.stderr)


if __name__ == "__main__":
    _flag_values = define_flags()
    cli.run(lambda argv: main(argv, _flag_values))
