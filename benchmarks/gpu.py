"""Headline speed figures on one GPU, one JSON line per figure on stdout (logs go to stderr):

  machine               device kind and count, library versions, float32 matmul settings (value: devices).
  encoder_images_per_s  SAM's image encoder on [batch, 1024, 1024, 3] (vit_b, vit_l, vit_h): ours (jax.jit, matmuls
                        in float32 or bfloat16) next to segment_anything's `ImageEncoderViT` on the same device
                        (float32, and bfloat16 through torch.autocast), same batch.
  video_fps             RefSAM inference, frames/s, next to the paper's (9.5 / 6.5 / 4.8 FPS for ViT-B/L/H): the
                        jitted `RefSAM.__call__` (image encoder, dense attention and decoder per frame, one
                        expression) on chunks of frames, carrying the track state from chunk to chunk, with random
                        text features [1, L, C_t]. Not timed: decoding and resizing frames, the text encoder (once
                        per expression), upsampling masks to the video's size.
  train_step            s/step of the jitted training step (`refsam_jax.train.step.make_train_step`, the paper's
                        trainable groups and per-group AdamW, Dice + focal loss on cached text features) for RefSAM
                        vit_b and vit_h at 1024 px, and its MFU = flops_per_step / step time / the device's peak.

Every figure uses random weights ("weights": "random"); times are medians of --repeats runs after a warm-up,
fenced by block_until_ready / torch.cuda.synchronize. Memory fields: "peak_bytes" is the device's high-water mark
(JAX: `memory_stats()["peak_bytes_in_use"]` since the process started; torch: `max_memory_allocated` of that
figure), null where the device does not report it; "program_bytes" is what the compiled JAX program needs
(arguments + outputs + temporaries, `memory_analysis()`).
FLOPs: "flops_per_step" counts the matrix products and convolutions of the step's jaxpr, loops as many times as
they run, rematerialisation included; XLA's `cost_analysis()` ("xla_flops_per_step") counts each loop body once,
and SAM's global attention is a loop over query chunks. "flops_by_dtype" splits the count by operand dtype.
A figure that fails (an OOM, torch missing) prints its line with "error" and the next one runs; a figure that the
budget leaves out prints its line with "skipped".

On the lent H200 (its image has JAX, flax, optax, orbax-checkpoint, PyTorch, pillow, safetensors and psutil, not
ml-collections nor segment-anything), from the repository root: once, here,

    python -m pip download --no-deps -d .whl ml-collections==1.1.0 segment-anything==1.0

then there, carrying .whl (ignored by git):

    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && \\
        PYTHONPATH=.:.site python3 benchmarks/gpu.py > gpu.jsonl

If the image's flax is older than 0.12, add flax==0.12.8 to the wheels. A figure starts only while the time left
under --budget_s (counted from the start) exceeds the slowest figure so far, so that the run ends within about
8 minutes. `--smoke` runs every figure on the CPU with a tiny SAM in under a minute (tests/test_gpu_benchmark.py),
so that this script cannot rot.
"""

import argparse
import collections
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.extend import core as jax_core
from sam_encoder import bench_ours, bench_torch
from video_inference import device_peak_bytes

from refsam_jax.model import groups
from refsam_jax.model.config import default_model_config
from refsam_jax.model.refsam import RefSAM, build_refsam
from refsam_jax.sam.build import build_sam
from refsam_jax.sam.config import SAM_CONFIGS, SamConfig
from refsam_jax.train import losses
from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.train import step as step_lib
from refsam_jax.trees import cast_floating

PAPER_FPS = {"vit_b": 9.5, "vit_l": 6.5, "vit_h": 4.8}
# Dense peak FLOP/s by compute dtype, from the vendors' datasheets; the first name found in the device kind wins.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}
# configs/refytvos.py's learning rates (they do not change the cost); that config imports the data pipeline.
LEARNING_RATES = {"adapter": 1e-4, "lora": 1e-4, "mlp": 1e-4, "dense": 1e-4, "mask_decoder": 1e-6, "tracking": 1e-4}
# --smoke: a SAM small enough to compile every figure on two CPU cores in seconds (one windowed block, two global).
SMOKE_SAM = SamConfig(encoder_embed_dim=32, encoder_depth=3, encoder_num_heads=2, encoder_global_attn_indexes=(1, 2),
                      img_size=64, patch_size=8, window_size=4, prompt_embed_dim=32, decoder_depth=1,
                      decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)

Line = dict[str, object]


def optim_config() -> ml_collections.ConfigDict:
    """configs/refytvos.py's `optim`: AdamW per trainable group, constant learning rates, no clipping."""
    return ml_collections.ConfigDict({
        "lr": LEARNING_RATES, "weight_decay": dict.fromkeys(LEARNING_RATES, 0.01), "b1": 0.9, "b2": 0.999,
        "eps": 1e-8, "schedule": "constant", "warmup_steps": 0, "end_lr_factor": 0.0, "clip_grad_norm": 0.0,
        "accumulate_steps": 1})


def refsam_loss(model: RefSAM, batch: Mapping[str, jax.Array], dtype) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`refsam_jax.task.refsam_loss` on cached text features with the default loss weights (that module imports
    the data pipeline): frames `[B, T, S, S, 3]`, text `[B, L, C_t]` cast to `dtype`."""
    logits, _ = model(batch["frames"].astype(dtype), batch["text_features"].astype(dtype), batch["text_mask"])
    return losses.refsam_loss(logits, batch["masks"], batch["image_size"])


def matmul_flops(jaxpr: jax_core.Jaxpr) -> dict[str, int]:
    """FLOPs of the matrix products and convolutions of `jaxpr` by operand dtype, each loop (`scan`, `lax.map`)
    counted as many times as it runs. A transposed convolution counts its input's zeros out (exact when the
    kernel equals the stride, as in SAM's decoder)."""
    flops = collections.Counter()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            lhs, rhs = (v.aval for v in eqn.invars)
            if name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                per_output = math.prod(lhs.shape[d] for d in contracting)
            else:  # The kernel's size per output feature, over the input dilation of a transposed convolution.
                out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
                per_output = math.prod(rhs.shape) // out_features // math.prod(eqn.params["lhs_dilation"])
            flops[str(jnp.promote_types(lhs.dtype, rhs.dtype))] += 2 * per_output * math.prod(eqn.outvars[0].aval.shape)
        times = eqn.params["length"] if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
                    sub = sub.jaxpr if isinstance(sub, jax_core.ClosedJaxpr) else sub
                    flops.update({dtype: times * n for dtype, n in matmul_flops(sub).items()})
    return dict(flops)


def program_bytes(compiled) -> int:
    """Device bytes a compiled program needs: arguments + outputs + temporaries, less what outputs alias."""
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn` (which waits for its results), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalised-looking images `[batch, size, size, 3]` float32."""
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def sam_config(name: str) -> SamConfig:
    return SMOKE_SAM if name == "smoke" else SAM_CONFIGS[name]


def model_config(text_width: int, text_length: int) -> ml_collections.ConfigDict:
    """The default RefSAM (adapters, HDA, tracking) for text features `[L, C_t]`; SAM is passed to build_refsam."""
    config = default_model_config()
    config.text.width, config.text.max_length = text_width, text_length
    return config


def encoder_jax(sam: SamConfig, batch: int, dtype: str, repeats: int) -> Line:
    """Our image encoder under jax.jit (`benchmarks/sam_encoder.py`), images/s."""
    compile_s, runs = bench_ours(sam, random_images(batch, sam.img_size), repeats, jnp.dtype(dtype))
    return {"value": batch / statistics.median(wall for wall, _ in runs), "unit": "images/s", "compile_s": compile_s,
            "peak_bytes": device_peak_bytes()}


def encoder_torch(sam: SamConfig, batch: int, dtype: str, repeats: int, device: str) -> Line:
    """segment_anything's image encoder on `device` (`benchmarks/sam_encoder.py`), images/s."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} sees no GPU")
        torch.cuda.reset_peak_memory_stats()
    runs = bench_torch(sam, random_images(batch, sam.img_size), repeats, device, dtype)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.empty_cache()  # for the JAX figures that follow
    return {"value": batch / statistics.median(wall for wall, _ in runs), "unit": "images/s", "peak_bytes": peak}


def video_fps(sam: SamConfig, config: ml_collections.ConfigDict, dtype: str, chunk: int, chunks: int,
              repeats: int) -> Line:
    """Frames/s of `RefSAM.__call__` jitted on `chunks` chunks of `chunk` frames for one expression."""
    model = build_refsam(config, sam=build_sam(config=sam, seed=0, dtype=jnp.dtype(dtype)), seed=0)
    model.eval()
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    length = config.text.max_length
    frames = jnp.asarray(random_images(chunk, sam.img_size)[None])
    text = jnp.asarray(rng.normal(size=(1, length, config.text.width)), jnp.float32)
    mask = jnp.arange(length)[None] < length // 2
    initial = model.initial_track_state(1)
    del model

    @jax.jit
    def forward(state, frames, text, mask, track_state):
        return nnx.merge(graphdef, state)(frames, text, mask, track_state)

    start = time.perf_counter()
    compiled = forward.lower(state, frames, text, mask, initial).compile()
    compile_s = time.perf_counter() - start

    def video():
        track_state = initial
        for _ in range(chunks):
            logits, track_state = compiled(state, frames, text, mask, track_state)
        jax.block_until_ready((logits, track_state))

    return {"value": chunk * chunks / median_s(video, repeats), "unit": "frames/s", "chunk": chunk,
            "frames": chunk * chunks, "expressions": 1, "text": [1, length, config.text.width],
            "compile_s": compile_s, "program_bytes": program_bytes(compiled), "peak_bytes": device_peak_bytes()}


def train_batch(batch: int, frames: int, size: int, length: int, width: int, seed: int = 0) -> dict[str, jax.Array]:
    """A random training batch with cached text features, as `refsam_jax.task` prepares them."""
    rng = np.random.default_rng(seed)
    return {
        "frames": jnp.asarray(rng.normal(size=(batch, frames, size, size, 3)), jnp.float32),
        "masks": jnp.asarray(rng.uniform(size=(batch, frames, size, size)) > 0.5, jnp.float32),
        "image_size": jnp.asarray(np.tile([size, 3 * size // 4], (batch, frames, 1)), jnp.int32),
        "text_features": jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(length)[None].repeat(batch, 0) < length // 2),
    }


def train_step(sam: SamConfig, config: ml_collections.ConfigDict, dtype: str, batch_size: int, num_frames: int,
               repeats: int, peak_flops: float | None) -> Line:
    """Seconds per jitted training step, its FLOPs and MFU (see the module docstring)."""
    compute_dtype = jnp.dtype(dtype)
    model = build_refsam(config, sam=build_sam(config=sam, seed=0, dtype=compute_dtype), seed=0)  # as training
    split = optimizer_lib.split_trainable(model, groups.trainable_rules(config))
    del model
    optimizer, _ = optimizer_lib.make_optimizer(optim_config(), split.labels, total_steps=1)
    trainable = step_lib.strong_types(split.trainable)
    frozen = cast_floating({"model": step_lib.strong_types(split.frozen)}, compute_dtype)
    opt_state = optimizer.init(trainable)
    batch = train_batch(batch_size, num_frames, sam.img_size, config.text.max_length, config.text.width)
    loss_fn = functools.partial(refsam_loss, dtype=compute_dtype)
    step = jax.jit(step_lib.make_train_step(split.graphdef, split.labels, optimizer, loss_fn,
                                            compute_dtype=compute_dtype), donate_argnums=(0, 2))
    start = time.perf_counter()
    traced = step.trace(trainable, frozen, opt_state, batch)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    flops_by_dtype = matmul_flops(traced.jaxpr.jaxpr)
    flops = sum(flops_by_dtype.values())

    def one_step():
        nonlocal trainable, opt_state
        trainable, opt_state, metrics = compiled(trainable, frozen, opt_state, batch)
        jax.block_until_ready(metrics)

    seconds = median_s(one_step, repeats)
    return {"value": seconds, "unit": "s/step", "batch": batch_size, "frames": num_frames,
            "mfu": flops / seconds / peak_flops if peak_flops else None, "flops_per_step": flops,
            "xla_flops_per_step": compiled.cost_analysis()["flops"], "flops_by_dtype": flops_by_dtype,
            "peak_flops": peak_flops, "trainable_params": sum(x.size for x in jax.tree.leaves(trainable)),
            "compile_s": compile_s, "program_bytes": program_bytes(compiled), "peak_bytes": device_peak_bytes()}


def peak_flops_of(device_kind: str, dtype: str, override_tflops: float) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from): --peak_tflops, else PEAK_FLOPS by device kind, else none."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    for name, peaks in PEAK_FLOPS.items():
        if name in device_kind:
            return peaks[dtype], f"datasheet {name} {dtype} dense"
    return None, f"no peak known for {device_kind!r}: pass --peak_tflops"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_settings() -> tuple[str | None, bool | None]:
    """(torch's version, whether its float32 matmuls may use TF32), (None, None) without torch."""
    try:
        import torch
    except ImportError:
        return None, None
    return torch.__version__, torch.backends.cuda.matmul.allow_tf32


def machine(smoke: bool) -> Line:
    device = jax.devices()[0]
    torch_version, allow_tf32 = torch_settings()
    return {"figure": "machine", "value": jax.device_count(), "unit": "devices", "device_kind": device.device_kind,
            "platform": device.platform, "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": version("jaxlib"), "flax": version("flax"), "torch": torch_version,
            "segment_anything": version("segment-anything"),
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "torch_matmul_allow_tf32": allow_tf32, "smoke": smoke, "weights": "random"}


def figures(args) -> list[tuple[Line, Callable[[], Line]]]:
    """(identifying fields, measurement) of every figure, in the order they run."""
    torch_device = "cpu" if args.smoke else "cuda"
    peak, peak_source = peak_flops_of(jax.devices()[0].device_kind, args.train_dtype, args.peak_tflops)
    if args.smoke and peak is None:
        peak, peak_source = 1e12, "nominal 1 TFLOP/s (--smoke)"
    config = model_config(args.text_width, args.text_length)
    out = []

    def add(figure: str, name: str, dtype: str, impl: str, measure: Callable[[], Line], **fields) -> None:
        out.append(({"figure": figure, "model": name, "dtype": dtype, "impl": impl, **fields,
                     "image_size": sam_config(name).img_size, "weights": "random"}, measure))

    for name in args.models.split(","):
        sam, batch = sam_config(name), args.encoder_batch
        for dtype in ("float32", "bfloat16"):
            add("encoder_images_per_s", name, dtype, "jax",
                functools.partial(encoder_jax, sam, batch, dtype, args.repeats), batch=batch)
        for dtype in ("float32", "bfloat16"):
            add("encoder_images_per_s", name, dtype, "torch",
                functools.partial(encoder_torch, sam, batch, dtype, args.repeats, torch_device), batch=batch,
                device=torch_device)
    for name in args.models.split(","):
        for dtype in args.video_dtypes.split(","):
            add("video_fps", name, dtype, "jax", functools.partial(
                video_fps, sam_config(name), config, dtype, args.video_chunk, args.video_chunks, args.repeats),
                paper=PAPER_FPS.get(name))
    for name in args.train_models.split(","):
        add("train_step", name, args.train_dtype, "jax", functools.partial(
            train_step, sam_config(name), config, args.train_dtype, args.train_batch, args.train_frames, args.repeats,
            peak), peak_source=peak_source)
    return out


def run(measurements: list[tuple[Line, Callable[[], Line]]], budget_s: float, start: float,
        emit: Callable[[Line], None]) -> None:
    """Runs each measurement and emits its line: with "error" if it raised, "skipped" once the budget is short."""
    slowest = 0.0
    for fields, measure in measurements:
        elapsed = time.perf_counter() - start
        if elapsed + slowest > budget_s:
            emit({**fields, "skipped": f"--budget_s {budget_s:g}: {elapsed:.0f} s spent, the slowest figure took "
                                       f"{slowest:.0f} s"})
            continue
        print(f"[{elapsed:6.1f} s] {fields}", file=sys.stderr, flush=True)
        figure_start = time.perf_counter()
        try:
            line = {**fields, **measure()}
        except Exception as e:  # noqa: BLE001  One figure's failure (an OOM, torch missing) must not stop the others.
            traceback.print_exc()
            line = {**fields, "error": f"{type(e).__name__}: {e}"[:2000]}
        gc.collect()
        line["figure_s"] = time.perf_counter() - figure_start
        slowest = max(slowest, line["figure_s"])
        emit(line)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_b,vit_l,vit_h", help="encoder and video figures")
    parser.add_argument("--train_models", default="vit_b,vit_h")
    parser.add_argument("--encoder_batch", type=int, default=8, help="images per encoder call (jax and torch)")
    parser.add_argument("--video_chunk", type=int, default=8, help="frames per jitted call (the engine's default)")
    parser.add_argument("--video_chunks", type=int, default=4, help="chunks per timed video")
    parser.add_argument("--video_dtypes", default="float32", help="image-encoder matmul dtypes, e.g. float32,bfloat16")
    parser.add_argument("--train_batch", type=int, default=8, help="clips per step (configs/refytvos.py: 8)")
    parser.add_argument("--train_frames", type=int, default=3, help="frames per clip (configs/refytvos.py: 3)")
    parser.add_argument("--train_dtype", default="bfloat16", choices=("float32", "bfloat16"), help="compute_dtype")
    parser.add_argument("--text_width", type=int, default=1024, help="text feature width C_t (T5-3B: 1024)")
    parser.add_argument("--text_length", type=int, default=32, help="tokens per expression L (the recipe's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure, after one warm-up")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="peak TFLOP/s for the MFU (0: from the device kind, for --train_dtype)")
    parser.add_argument("--budget_s", type=float, default=450.0, help="skip the figures that would not fit")
    parser.add_argument("--smoke", action="store_true",
                        help="every figure on the CPU with a tiny SAM at fixed tiny sizes (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models = args.train_models = "smoke"
        args.encoder_batch, args.video_chunk, args.video_chunks, args.video_dtypes = 2, 2, 2, "float32"
        args.train_batch, args.train_frames, args.text_width, args.text_length, args.repeats = 1, 2, 32, 8, 2
    return args


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    # JAX and torch share the GPU: JAX takes memory as it needs it instead of 75% at start.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
        # Compiling fast matters more than running fast at these sizes: 3x less compile time.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false")
    # Only the JSON lines go to stdout; anything else printed there (libraries, XLA) goes to stderr.
    lines = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def emit(line: Line) -> None:
        lines.write(json.dumps(line) + "\n")

    emit(machine(args.smoke))
    run(figures(args), args.budget_s, start, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
