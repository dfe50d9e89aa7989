"""Speed of SAM's image encoder on one 1024 x 1024 image: ours (jax.jit, float32 unless --dtype) against
segment_anything's PyTorch `ImageEncoderViT` (float32, eval, no_grad), both with random weights, on this
machine in this run.

    python benchmarks/sam_encoder.py [--model-type vit_b] [--repeats 5] [--threads N] [--dtype bfloat16]

Prints both medians (wall and process CPU time), the ratios ours / torch and our compile time.
"""

import argparse
import os
import statistics
import time

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


def bench_ours(config: SamConfig, image: np.ndarray, repeats: int, dtype):
    """(compile seconds, run seconds per repeat) of our encoder under jax.jit, matmuls in `dtype`."""
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
    return compile_s, _timed(lambda: compiled(state, x).block_until_ready(), repeats)


def bench_torch(config: SamConfig, image: np.ndarray, repeats: int, device: str = "cpu", dtype: str = "float32"):
    """Run seconds per repeat of segment_anything's encoder on `device` ("cpu" or "cuda"), after one warm-up
    run: float32, or under torch.autocast to bfloat16. torch is imported here, so that this module imports
    without it."""
    import torch

    torch.manual_seed(0)
    with torch.device(device):
        encoder = build_torch_sam(config).image_encoder
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).to(device)

    def run():
        encoder(x)
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16"):
        run()  # warm-up
        return _timed(run, repeats)


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
    compile_s, ours = bench_ours(config, image, args.repeats, jnp.dtype(args.dtype))
    theirs = bench_torch(config, image, args.repeats)
    medians = {}
    for name, runs in (("ours  (jax.jit)", ours), ("torch (eager)  ", theirs)):
        wall, cpu = statistics.median(t for t, _ in runs), statistics.median(c for _, c in runs)
        medians[name] = wall, cpu
        print(f"{name}: median {wall:.3f} s wall, {cpu:.3f} s CPU  (wall per run: "
              f"{', '.join(f'{t:.3f}' for t, _ in runs)})")
    (ours_wall, ours_cpu), (torch_wall, torch_cpu) = medians.values()
    print(f"ratio ours / torch: {ours_wall / torch_wall:.2f} wall, {ours_cpu / torch_cpu:.2f} CPU time")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"our compile time: {compile_s:.1f} s")


if __name__ == "__main__":
    main()
