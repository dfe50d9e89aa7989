"""Speed of SAM's image encoder on one 1024 x 1024 image: ours (jax.jit, float32 unless --dtype) against
segment_anything's PyTorch `ImageEncoderViT` (float32, eval, no_grad), both with random weights, on this
machine in this run.

    python benchmarks/sam_encoder.py [--model-type vit_b] [--repeats 5] [--threads N] [--dtype bfloat16]

The two run alternately, a round each repeat, so that both see the same state of a shared machine.
Prints both medians (wall and process CPU time), the ratio ours / torch of each round (median and range)
and our compile time.
"""

import argparse
import os
import statistics
import time
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax.sam.config import SAM_CONFIGS, SamConfig
from refsam_jax.sam.image_encoder import ImageEncoderViT
from refsam_jax.sam.params import build_torch_sam


def _timed(fn, repeats: int):
    """[(wall seconds, process CPU seconds)] of `repeats` calls; CPU time is the steadier figure on a
    machine shared with other jobs."""
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return times


def ours_runner(config: SamConfig, image: np.ndarray, dtype) -> Tuple[float, Callable[[], None]]:
    """(compile seconds, one warm run) of our encoder under jax.jit, matmuls in `dtype`."""
    graphdef, state = nnx.split(ImageEncoderViT(config, nnx.Rngs(0), dtype=dtype))

    @jax.jit
    def encode(state, x):
        embedding, _ = nnx.merge(graphdef, state)(x)
        return embedding

    x = jax.device_put(image)
    start = time.perf_counter()
    compiled = encode.lower(state, x).compile()
    compile_s = time.perf_counter() - start
    compiled(state, x).block_until_ready()  # warm-up
    return compile_s, lambda: compiled(state, x).block_until_ready()


def torch_runner(config: SamConfig, image: np.ndarray, device: str = "cpu",
                 dtype: str = "float32") -> Callable[[], None]:
    """One warm run of segment_anything's encoder on `device` ("cpu" or "cuda"): float32, or under
    torch.autocast to bfloat16. torch is imported here, so that this module imports without it."""
    import torch

    torch.manual_seed(0)
    with torch.device(device):
        encoder = build_torch_sam(config).image_encoder
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).to(device)

    def run():
        with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16"):
            encoder(x)
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    return run


def bench_ours(config: SamConfig, image: np.ndarray, repeats: int, dtype):
    """(compile seconds, [(wall, CPU seconds)] per repeat) of our encoder."""
    compile_s, run = ours_runner(config, image, dtype)
    return compile_s, _timed(run, repeats)


def bench_torch(config: SamConfig, image: np.ndarray, repeats: int, device: str = "cpu", dtype: str = "float32"):
    """[(wall, CPU seconds)] per repeat of segment_anything's encoder."""
    return _timed(torch_runner(config, image, device, dtype), repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="vit_b", choices=sorted(SAM_CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype of our encoder's matmuls (torch always runs float32)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import torch

    config = SAM_CONFIGS[args.model_type]
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).normal(size=(1, config.img_size, config.img_size, 3)).astype(np.float32)
    print(f"{args.model_type} image encoder, 1 x {config.img_size}^2, ours {args.dtype} vs torch float32, "
          f"{args.repeats} repeats, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads")
    compile_s, run_ours = ours_runner(config, image, jnp.dtype(args.dtype))
    run_torch = torch_runner(config, image)
    # Alternated, so that both see the same state of a shared machine; the ratio is taken per round.
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours += _timed(run_ours, 1)
        theirs += _timed(run_torch, 1)
    for name, runs in (("ours  (jax.jit)", ours), ("torch (eager)  ", theirs)):
        wall, cpu = statistics.median(t for t, _ in runs), statistics.median(c for _, c in runs)
        print(f"{name}: median {wall:.3f} s wall, {cpu:.3f} s CPU  (wall per run: "
              f"{', '.join(f'{t:.3f}' for t, _ in runs)})")
    wall_ratios = [a[0] / b[0] for a, b in zip(ours, theirs)]
    cpu_ratios = [a[1] / b[1] for a, b in zip(ours, theirs)]
    print(f"ratio ours / torch (median over rounds): {statistics.median(wall_ratios):.2f} wall "
          f"(rounds {min(wall_ratios):.2f}-{max(wall_ratios):.2f}), {statistics.median(cpu_ratios):.2f} CPU time")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"our compile time: {compile_s:.1f} s")


if __name__ == "__main__":
    main()
