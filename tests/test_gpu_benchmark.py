"""benchmarks/gpu.py: `--smoke` prints every figure as one JSON line with a positive value on the CPU, a failing
figure or a spent budget does not stop the others, the FLOP count follows loops, and the training figure is the
recipe's (configs/refytvos.py) although the script cannot import it on the GPU machine."""

import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture
def gpu(monkeypatch):
    """benchmarks/gpu.py as a module (it imports its sibling scripts by name)."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import gpu

    return gpu


def test_smoke_prints_every_figure():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu.py"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # Nothing but JSON lines on stdout.
    assert [line for line in lines if "error" in line or "skipped" in line] == []
    kinds = [(line["figure"], line.get("impl"), line.get("dtype")) for line in lines]
    assert kinds == [("machine", None, None),
                     ("encoder_images_per_s", "jax", "float32"), ("encoder_images_per_s", "jax", "bfloat16"),
                     ("encoder_images_per_s", "torch", "float32"), ("encoder_images_per_s", "torch", "bfloat16"),
                     ("video_fps", "jax", "float32"), ("train_step", "jax", "bfloat16")]
    assert all(positive(line["value"]) for line in lines), lines
    assert all(line["weights"] == "random" for line in lines)
    machine, *figures = lines
    assert machine["smoke"] is True and machine["device_kind"] and machine["jax"] == jax.__version__
    assert all(positive(line["figure_s"]) for line in figures)
    train = lines[-1]
    assert positive(train["mfu"]) and train["mfu"] == pytest.approx(
        train["flops_per_step"] / train["value"] / train["peak_flops"])
    assert sum(train["flops_by_dtype"].values()) == train["flops_per_step"]
    assert positive(train["xla_flops_per_step"]) and positive(train["trainable_params"])
    # Memory: what the compiled programs need; the device's high-water mark where it has one (not on the CPU).
    assert all(positive(line["program_bytes"]) for line in lines if line["figure"] in ("video_fps", "train_step"))
    assert all(line["peak_bytes"] is None or positive(line["peak_bytes"]) for line in figures)


def test_a_failing_figure_and_the_budget(gpu):
    lines = []

    def fail():
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory")

    def works():
        return {"value": 1.0}

    figures = [({"figure": "a"}, fail), ({"figure": "b"}, works), ({"figure": "c"}, works)]
    gpu.run(figures, budget_s=60.0, start=time.perf_counter(), emit=lines.append)
    assert [line["figure"] for line in lines] == ["a", "b", "c"]
    assert lines[0]["error"] == "MemoryError: RESOURCE_EXHAUSTED: out of memory"
    assert lines[1]["value"] == lines[2]["value"] == 1.0
    lines.clear()
    gpu.run(figures[1:], budget_s=60.0, start=time.perf_counter() - 61.0, emit=lines.append)
    assert all("skipped" in line and "value" not in line for line in lines), lines


def test_flops_follow_loops(gpu):
    x, w = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
    looped = jax.make_jaxpr(lambda x, w: jax.lax.map(lambda xi: xi @ w, x))(x, w)
    assert gpu.matmul_flops(looped.jaxpr) == {"float32": 2 * 4 * 8 * 16 * 32}
    # SAM's decoder upsamples with kernel = stride = 2 transposed convolutions: one tap per output pixel.
    image, kernel = jnp.ones((1, 4, 4, 8), jnp.bfloat16), jnp.ones((2, 2, 8, 6), jnp.bfloat16)
    transposed = jax.make_jaxpr(lambda a, b: jax.lax.conv_transpose(a, b, (2, 2), "VALID",
                                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert gpu.matmul_flops(transposed(image, kernel).jaxpr) == {"bfloat16": 2 * 8 * 8 * 6 * 8}


def test_the_training_figure_is_the_recipe(gpu):
    from refsam_jax import task
    from refsam_jax.configs import refytvos

    recipe = refytvos.get_config()
    args = gpu.parse_args([])
    assert (args.text_width, args.text_length, args.train_batch, args.train_frames, args.train_dtype) == (
        recipe.model.text.width, recipe.model.text.max_length, recipe.data.batch_size, recipe.data.num_frames,
        recipe.compute_dtype)
    ours = gpu.model_config(args.text_width, args.text_length)
    ours.sam = recipe.model.sam  # The figures hand build_refsam their SAM.
    assert ours.to_dict() == recipe.model.to_dict()
    assert gpu.optim_config().to_dict() == recipe.optim.to_dict()
    assert not recipe.trainable  # task.derive: the groups of groups.trainable_rules, as the figure uses.

    # The loss: the same inputs reach the model, and the same loss comes out.
    seen = []
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 32, 32)), jnp.float32)

    def model(frames, text, mask):
        seen.append((frames.dtype, text.dtype, np.asarray(mask)))
        return logits, None

    batch = gpu.train_batch(2, 3, 32, 6, 8)
    expected, expected_parts = task.refsam_loss(recipe, model, batch)
    loss, parts = gpu.refsam_loss(model, batch, jnp.dtype(recipe.compute_dtype))
    assert float(loss) == float(expected) and parts.keys() == expected_parts.keys()
    assert seen[0][:2] == seen[1][:2] == (jnp.bfloat16, jnp.bfloat16)
    np.testing.assert_array_equal(seen[0][2], seen[1][2])
