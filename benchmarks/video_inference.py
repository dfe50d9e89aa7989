"""Video inference cost: per-frame time and peak memory vs video length, chunked with a carried track state.

    python benchmarks/video_inference.py [--frames 8 16 32 64] [--chunk 8] [--model small|tiny|vit_b]
                                         [--expressions 1 2 4 8] [--expression_frames 16]

Each video is processed in chunks of `--chunk` frames by one jitted call that takes and returns the track
state, so time should grow linearly with the number of frames and peak memory should stay flat. As the
reference, measured in the same run, the whole video goes through one call (all frames through the ViT at
once, one scan): its peak memory grows with the video length. Times are the best of `--repeats` runs; the
process CPU time is printed too, as wall time is noisy on a shared machine. Peak memory is the host RSS sampled every
2 ms during the video (psutil), and the device's `peak_bytes_in_use` where `memory_stats()` has it
(GPU/TPU; it is a process-wide high-water mark, so videos run in increasing length).

Expressions: N expressions (`--expressions`) of one video of `--expression_frames` frames (the first frames of
the same random video), segmented in one pass as `refsam_jax.inference.VideoSegmenter` does with
`expression_batch` >= N: per chunk, the image encoder runs once on the frames (its jitted `_encode_jit`), then
the N expressions (random text features, each its own track state) go through Dense Attention and the decoder
as one batch (`_decode_jit`). Reported per N: video frames/s and (expression, frame) pairs/s, each also as the
ratio to N = 1, and the process CPU time per video frame. Not timed, here as above: reading and resizing
frames, the text encoder (once per expression), upsampling the masks to the video's size.
"""

import argparse
import json
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx

from refsam_jax import inference
from refsam_jax.model.config import default_model_config
from refsam_jax.model.refsam import build_refsam
from refsam_jax.sam.build import build_sam
from refsam_jax.sam.config import SAM_CONFIGS, SamConfig, tiny_config
from refsam_jax.sam.transforms import normalize

SMALL_SAM = SamConfig(encoder_embed_dim=96, encoder_depth=4, encoder_num_heads=3, encoder_global_attn_indexes=(1, 3),
                      img_size=256, patch_size=16, window_size=7, prompt_embed_dim=64, decoder_mlp_dim=256,
                      iou_head_hidden_dim=64)


class PeakRss:
    """Samples the process RSS in a background thread; `peak` is the maximum since `start`."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def device_peak_bytes() -> Optional[int]:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def build(model: str, text_width: int):
    config = default_model_config()
    config.text.width = text_width
    if model == "small":
        sam = build_sam("custom", config=SMALL_SAM, seed=0)
    elif model == "tiny":  # the unit tests' SAM (64 px), for tests/test_video_benchmark.py
        sam = build_sam("custom", config=tiny_config(), seed=0)
    else:
        config.sam.model_type = model
        sam = build_sam(model, config=SAM_CONFIGS[model], seed=0)
    return build_refsam(config, sam=sam, seed=0), sam.config


def expression_figure(model, frames: np.ndarray, text: jax.Array, mask: jax.Array, counts: List[int],
                      num_frames: int, chunk: int, repeats: int) -> List[Dict]:
    """One row per N in `counts`: the first `num_frames` of uint8 `frames [T, S, S, 3]` segmented for the first N
    expressions of `text [E, L, C_t]`, `mask [E, L]` in one pass, `chunk` frames per call, as `VideoSegmenter`
    does (image encoder once per frame, the N expressions decoded as one batch, each with its own track
    state). Times are the best of `repeats` runs after a warm-up; ratios are to the first count's row."""
    graphdef, state = nnx.split(model)
    size = frames.shape[1]
    content = np.asarray((size, size), np.int32)
    valid = np.ones(chunk, bool)

    def run_video(n: int) -> Tuple[float, float]:
        """(wall, process CPU) seconds for the video with the first n expressions."""
        features, text_mask = text[None, :n], mask[None, :n]  # [K=1, B=n, ...]: n independent expressions
        present = np.ones((1, n), bool)
        start, start_cpu = time.perf_counter(), time.process_time()
        track_state = model.initial_track_state(n)
        for first in range(0, num_frames, chunk):
            embedding, interm = inference._encode_jit(graphdef, state, frames[first:first + chunk], content)
            logits, track_state = inference._decode_jit(graphdef, state, embedding, interm, valid, features,
                                                        text_mask, present, track_state)
            np.asarray(logits)  # to the host, as a real writer of masks would
        jax.block_until_ready(track_state)
        return time.perf_counter() - start, time.process_time() - start_cpu

    rows: List[Dict] = []
    for n in counts:
        run_video(n)  # compile this number of expressions (and warm up)
        with PeakRss() as rss:
            runs = [run_video(n) for _ in range(repeats)]
        seconds, cpu_seconds = min(r[0] for r in runs), min(r[1] for r in runs)
        rows.append({"mode": "expressions", "expressions": n, "frames": num_frames, "chunk": chunk,
                     "seconds": seconds, "frames_per_s": num_frames / seconds,
                     "pairs_per_s": n * num_frames / seconds, "ms_per_frame": 1e3 * seconds / num_frames,
                     "cpu_ms_per_frame": 1e3 * cpu_seconds / num_frames, "peak_rss_mib": rss.peak / 2**20,
                     "device_peak_mib": (None if device_peak_bytes() is None else device_peak_bytes() / 2**20)})
    for row in rows:
        row["frames_per_s_ratio"] = row["frames_per_s"] / rows[0]["frames_per_s"]
        row["pairs_per_s_ratio"] = row["pairs_per_s"] / rows[0]["pairs_per_s"]
        row["cpu_ms_per_frame_ratio"] = row["cpu_ms_per_frame"] / rows[0]["cpu_ms_per_frame"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--chunk", type=int, default=8, help="frames per jitted call")
    parser.add_argument("--model", default="small", choices=["small", "tiny"] + list(SAM_CONFIGS),
                        help="small: a 256 px SAM (D=96, depth 4); tiny: 64 px, for tests")
    parser.add_argument("--text_width", type=int, default=64)
    parser.add_argument("--text_length", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="runs per video; the fastest is reported")
    parser.add_argument("--expressions", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="numbers of expressions segmented in one pass over one video (ratios are to the "
                             "first)")
    parser.add_argument("--expression_frames", type=int, default=16,
                        help="frames of the video the expressions are segmented in")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    if any(n % args.chunk for n in args.frames + [args.expression_frames]):
        parser.error(f"every --frames value and --expression_frames must be a multiple of --chunk {args.chunk}")
    if min(args.expressions) < 1:
        parser.error("every --expressions value must be >= 1")

    model, sam_config = build(args.model, args.text_width)
    model.eval()
    graphdef, state = nnx.split(model)
    size = sam_config.img_size

    @jax.jit
    def forward(state, frames, text, mask, track_state):
        return nnx.merge(graphdef, state)(frames, text, mask, track_state)

    rng = np.random.default_rng(0)
    num_texts = max(args.expressions)
    texts = jnp.asarray(rng.normal(size=(num_texts, args.text_length, args.text_width)), jnp.float32)
    masks = jnp.broadcast_to(jnp.arange(args.text_length) < args.text_length - 3, (num_texts, args.text_length))
    text, mask = texts[:1], masks[:1]
    initial = model.initial_track_state(1)

    video = rng.integers(0, 256, size=(max(args.frames + [args.expression_frames]), size, size, 3), dtype=np.uint8)
    frames = jnp.asarray(normalize(video.astype(np.float32)))[None]  # [1, T, S, S, 3], SAM-normalised

    def run_video(num_frames: int, chunk: int) -> Tuple[float, float]:
        """(wall, process CPU) seconds for the first `num_frames` frames, `chunk` frames per call."""
        start, start_cpu = time.perf_counter(), time.process_time()
        track_state = initial
        for first in range(0, num_frames, chunk):
            logits, track_state = forward(state, frames[:, first:first + chunk], text, mask, track_state)
            np.asarray(logits)  # to the host, as a real writer of masks would
        jax.block_until_ready(track_state)
        return time.perf_counter() - start, time.process_time() - start_cpu

    results: List[Dict] = []
    for mode, chunk_of in (("chunked", lambda n: args.chunk), ("whole video", lambda n: n)):
        for num_frames in args.frames:
            chunk = chunk_of(num_frames)
            run_video(chunk, chunk)  # compile this chunk shape (and warm up)
            with PeakRss() as rss:
                runs = [run_video(num_frames, chunk) for _ in range(args.repeats)]
            seconds, cpu_seconds = min(r[0] for r in runs), min(r[1] for r in runs)
            results.append({"mode": mode, "frames": num_frames, "chunk": chunk, "seconds": seconds,
                            "ms_per_frame": 1e3 * seconds / num_frames,
                            "cpu_ms_per_frame": 1e3 * cpu_seconds / num_frames, "peak_rss_mib": rss.peak / 2**20,
                            "device_peak_mib": (None if device_peak_bytes() is None
                                                else device_peak_bytes() / 2**20)})
    expressions = expression_figure(model, video, texts, masks, args.expressions, args.expression_frames,
                                    args.chunk, args.repeats)
    results.extend(expressions)

    device = jax.devices()[0]
    print(f"RefSAM video inference, model {args.model} ({size}px, ViT D={sam_config.encoder_embed_dim}, "
          f"depth {sam_config.encoder_depth}), device {device.platform}:{device.device_kind}, "
          f"text {args.text_length}x{args.text_width}")
    print(f"{'mode':<12}{'frames':>7}{'chunk':>6}{'total s':>9}{'ms/frame':>10}{'CPU ms/frame':>14}"
          f"{'peak RSS MiB':>14}{'device peak MiB':>17}")
    for r in results[:len(results) - len(expressions)]:
        device_peak = "n/a" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.0f}"
        print(f"{r['mode']:<12}{r['frames']:>7}{r['chunk']:>6}{r['seconds']:>9.2f}{r['ms_per_frame']:>10.1f}"
              f"{r['cpu_ms_per_frame']:>14.1f}{r['peak_rss_mib']:>14.0f}{device_peak:>17}")
    chunked = [r for r in results if r["mode"] == "chunked"]
    whole = [r for r in results if r["mode"] == "whole video"]
    first, last = chunked[0], chunked[-1]
    print(f"chunked: {last['frames'] / first['frames']:.0f}x the frames took "
          f"{last['seconds'] / first['seconds']:.2f}x the wall time and "
          f"{last['cpu_ms_per_frame'] * last['frames'] / (first['cpu_ms_per_frame'] * first['frames']):.2f}x the "
          f"CPU time; peak RSS {first['peak_rss_mib']:.0f} -> {last['peak_rss_mib']:.0f} MiB")
    print(f"at {last['frames']} frames: chunked / whole-video time {last['seconds'] / whole[-1]['seconds']:.2f}, "
          f"peak RSS {last['peak_rss_mib']:.0f} vs {whole[-1]['peak_rss_mib']:.0f} MiB")
    ratio = f"x N={expressions[0]['expressions']}"  # the ratio to the first row
    print(f"expressions: one video of {args.expression_frames} frames, chunk {args.chunk}; the image encoder once per "
          f"frame, the expressions decoded as one batch; frames/s: video frames, pairs/s: (expression, frame) pairs")
    print(f"{'N':>4}{'total s':>9}{'frames/s':>10}{ratio:>8}{'pairs/s':>10}{ratio:>8}{'CPU ms/frame':>14}{ratio:>8}"
          f"{'peak RSS MiB':>14}")
    for r in expressions:
        print(f"{r['expressions']:>4}{r['seconds']:>9.2f}{r['frames_per_s']:>10.1f}{r['frames_per_s_ratio']:>8.2f}"
              f"{r['pairs_per_s']:>10.1f}{r['pairs_per_s_ratio']:>8.2f}{r['cpu_ms_per_frame']:>14.1f}"
              f"{r['cpu_ms_per_frame_ratio']:>8.2f}{r['peak_rss_mib']:>14.0f}")
    many = expressions[-1]
    print(f"{many['expressions']} expressions vs {expressions[0]['expressions']}: {many['frames_per_s_ratio']:.2f}x "
          f"the video frames/s, {many['pairs_per_s_ratio']:.2f}x the (expression, frame) pairs/s, "
          f"{many['cpu_ms_per_frame_ratio']:.2f}x the CPU time per frame")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
