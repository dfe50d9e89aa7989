"""Training-step speed and memory: compile time, step time, optimizer-state and parameter bytes.

    python benchmarks/train_step.py [--models demo,vit_b] [--batch_size 1] [--num_frames 0] [--steps 3]
        [--compute_dtype float32]

A ViT-B step at 1024 px with T=3 needs ~16 GB on a CPU host; use --num_frames 1 on small machines.

For each model (demo: configs/demo.py's tiny SAM; vit_b: configs/refytvos.py with a ViT-B SAM) it builds the
model with random weights, the jitted training step of `refsam_jax.train` on one device, and a random batch
of the config's shapes with cached text features (the text encoder is not part of the step). It reports:
  - compile time of the step (lower + compile),
  - step time (median of --steps steps after one warm-up), and its ratio to the forward pass alone
    (the loss without gradients, measured in the same run: the reference),
  - trainable, frozen and optimizer-state bytes, and the optimizer-state / trainable ratio (AdamW: 2).
"""

import argparse
import functools
import os
import runpy
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax import task as task_lib
from refsam_jax.model.refsam import build_refsam
from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.train import step as step_lib
from refsam_jax.trees import cast_floating

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, compute_dtype: str, batch_size: int, num_frames: int):
    if name == "demo":
        config = runpy.run_path(os.path.join(ROOT, "configs", "demo.py"))["get_config"]()
    elif name in ("vit_b", "vit_l", "vit_h"):
        config = runpy.run_path(os.path.join(ROOT, "configs", "refytvos.py"))["get_config"]()
        config.model.sam.model_type = name
    else:
        raise ValueError(f"unknown model {name!r}: demo, vit_b, vit_l or vit_h")
    task_lib.derive(config)
    config.compute_dtype = compute_dtype
    if batch_size:
        config.data.batch_size = batch_size
    if num_frames:
        config.data.num_frames = num_frames
    return config


def random_batch(config, seed: int = 0):
    data, width = config.data, config.model.text.width
    b, t, s, l = data.batch_size, data.num_frames, data.image_size, data.max_text_length
    rng = np.random.default_rng(seed)
    return {
        "frames": jnp.asarray(rng.normal(size=(b, t, s, s, 3)), jnp.float32),
        "masks": jnp.asarray(rng.uniform(size=(b, t, s, s)) > 0.5, jnp.float32),
        "image_size": jnp.asarray(np.tile([s, 3 * s // 4], (b, t, 1)), jnp.int32),
        "text_features": jnp.asarray(rng.normal(size=(b, l, width)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(l)[None].repeat(b, 0) < l // 2),
    }


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def benchmark(name: str, compute_dtype: str, batch_size: int, num_frames: int, steps: int) -> dict:
    config = load_config(name, compute_dtype, batch_size, num_frames)
    dtype = jnp.bfloat16 if compute_dtype == "bfloat16" else jnp.float32
    model = build_refsam(task_lib.model_config_without_weights(config), seed=0)
    split = optimizer_lib.split_trainable(model, config.trainable)
    del model
    optimizer, _ = optimizer_lib.make_optimizer(config.optim, split.labels, config.total_steps)
    loss_fn = functools.partial(task_lib.refsam_loss, config)
    frozen = cast_floating({"model": split.frozen}, dtype)
    trainable, opt_state = split.trainable, optimizer.init(split.trainable)
    batch = random_batch(config)
    sizes = {
        "trainable_bytes": optimizer_lib.tree_bytes(trainable),
        "frozen_bytes": optimizer_lib.tree_bytes(frozen),
        "opt_state_bytes": optimizer_lib.tree_bytes(opt_state),
        "trainable_params": sum(optimizer_lib.group_sizes(trainable, split.labels).values()),
    }

    train_step = jax.jit(step_lib.make_train_step(split.graphdef, split.labels, optimizer, loss_fn,
                                                  compute_dtype=dtype), donate_argnums=(0, 2))
    start = time.perf_counter()
    compiled = train_step.lower(trainable, frozen, opt_state, batch).compile()
    compile_s = time.perf_counter() - start

    @jax.jit
    def forward(trainable, frozen, batch):
        model = nnx.merge(split.graphdef, cast_floating(trainable, dtype), frozen["model"])
        return loss_fn(model, batch)[0]

    forward_compiled = forward.lower(trainable, frozen, batch).compile()
    forward_times = [_timed(forward_compiled, trainable, frozen, batch)[1] for _ in range(steps + 1)][1:]

    step_times = []
    for _ in range(steps + 1):
        (trainable, opt_state, metrics), seconds = _timed(compiled, trainable, frozen, opt_state, batch)
        step_times.append(seconds)
    step_s, forward_s = statistics.median(step_times[1:]), statistics.median(forward_times)
    clips = config.data.batch_size
    return {
        "model": name, "dtype": compute_dtype, "batch": clips, "frames": config.data.num_frames,
        "image_size": config.data.image_size, "compile_s": compile_s, "step_s": step_s, "forward_s": forward_s,
        "step_over_forward": step_s / forward_s, "clips_per_s": clips / step_s,
        "opt_state_over_trainable": sizes["opt_state_bytes"] / sizes["trainable_bytes"],
        "loss": float(metrics["loss"]), **sizes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,vit_b", help="comma-separated: demo, vit_b, vit_l, vit_h")
    parser.add_argument("--batch_size", type=int, default=1, help="clips per step (0: the config's)")
    parser.add_argument("--num_frames", type=int, default=0, help="frames per clip T (0: the config's, 3)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")
    for name in args.models.split(","):
        r = benchmark(name.strip(), args.compute_dtype, args.batch_size, args.num_frames, args.steps)
        print(f"{r['model']:6s} {r['dtype']} B={r['batch']} T={r['frames']} S={r['image_size']}: "
              f"compile {r['compile_s']:.1f} s, step {r['step_s'] * 1e3:.1f} ms "
              f"({r['step_over_forward']:.2f}x the forward pass, {r['forward_s'] * 1e3:.1f} ms), "
              f"{r['clips_per_s']:.2f} clips/s; trainable {r['trainable_params'] / 1e6:.2f} M params "
              f"{r['trainable_bytes'] / 2**20:.1f} MiB, frozen {r['frozen_bytes'] / 2**20:.1f} MiB, "
              f"optimizer state {r['opt_state_bytes'] / 2**20:.1f} MiB = "
              f"{r['opt_state_over_trainable']:.3f}x trainable; loss {r['loss']:.4f}")


if __name__ == "__main__":
    main()
