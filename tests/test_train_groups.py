"""Trainable groups, the per-group optimiser, the loss and the sharding rules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from refsam_jax import param_rules
from refsam_jax.sam.common import Buffer
from refsam_jax.train import loop, losses
from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.train import sharding as sharding_lib


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.backbone = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
        self.backbone_dense = nnx.Linear(4, 4, rngs=rngs)
        self.dense = nnx.Linear(4, 4, rngs=rngs)
        self.decoder = nnx.Linear(4, 2, rngs=rngs)
        self.pe = Buffer(jnp.ones((4,)))


def optim_config(**overrides):
    optim = loop.base_config().optim
    optim.lr = ml_collections.ConfigDict({"dense": 1e-2, "decoder": 1e-3})
    optim.weight_decay = ml_collections.ConfigDict({"dense": 0.0, "decoder": 0.0})
    optim.update(overrides)
    return optim


def test_rules_assign_groups_first_match_wins_and_skip_buffers():
    model = Net(nnx.Rngs(0))
    rules = ((r"^dense\.kernel$", "decoder"), (r"^dense\.", "dense"), (r"^decoder\.", "decoder"),
             (r"^backbone\.1\.", "dense"), (r"^pe$", "dense"))
    groups = param_rules.assign_groups(model, rules[:4])
    assert groups == {"dense.kernel": "decoder", "dense.bias": "dense", "decoder.kernel": "decoder",
                      "decoder.bias": "decoder", "backbone.1.kernel": "dense", "backbone.1.bias": "dense"}
    with pytest.raises(ValueError, match=r"\('\^pe\$', 'dense'\)\] match no parameter of Net"):
        param_rules.assign_groups(model, rules)  # Buffers never train.
    with pytest.raises(ValueError, match="invalid regex"):
        param_rules.assign_groups(model, [("(", "dense")])

    split = optimizer_lib.split_trainable(model, rules[1:3])
    assert split.group_names == ("decoder", "dense")
    trainable = {param_rules.path_to_str(p) for p, _ in nnx.to_flat_state(split.trainable)}
    frozen = {param_rules.path_to_str(p) for p, _ in nnx.to_flat_state(split.frozen)}
    assert trainable == {"dense.kernel", "dense.bias", "decoder.kernel", "decoder.bias"}
    assert "backbone_dense.kernel" in frozen and "pe" in frozen  # '^' keeps 'dense' from matching mid-path.
    assert optimizer_lib.group_sizes(split.trainable, split.labels) == {"dense": 20, "decoder": 10}


def _run(optimizer, params, steps, grad=1.0):
    state = optimizer.init(params)
    history = []
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.full_like(p, grad), params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def test_optimizer_uses_each_groups_learning_rate_and_matches_adamw():
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2,))}
    labels = {"a": "dense", "b": "decoder"}
    optimizer, schedules = optimizer_lib.make_optimizer(optim_config(weight_decay=ml_collections.ConfigDict(
        {"dense": 0.1, "decoder": 0.0})), labels, total_steps=10)
    history = _run(optimizer, params, 3)
    reference_a = _run(optax.adamw(1e-2, weight_decay=0.1), params["a"], 3)
    reference_b = _run(optax.adamw(1e-3, weight_decay=0.0), params["b"], 3)
    np.testing.assert_allclose(history[-1]["a"], reference_a[-1], rtol=1e-6)
    np.testing.assert_allclose(history[-1]["b"], reference_b[-1], rtol=1e-6)
    assert optimizer_lib.learning_rates(schedules, 5, 1) == pytest.approx({"dense": 1e-2, "decoder": 1e-3})

    with pytest.raises(ValueError, match=r"\['tracking'\] have no entry"):
        optimizer_lib.make_optimizer(optim_config(), {"a": "tracking"}, total_steps=10)


def test_schedules_clipping_and_accumulation():
    optim = optim_config(schedule="warmup_cosine", warmup_steps=2, end_lr_factor=0.1)
    _, schedules = optimizer_lib.make_optimizer(optim, {"a": "dense"}, total_steps=10)
    lrs = [optimizer_lib.learning_rates(schedules, s, 1)["dense"] for s in (0, 1, 2, 10)]
    np.testing.assert_allclose(lrs, [0.0, 5e-3, 1e-2, 1e-3], rtol=1e-5)
    with pytest.raises(ValueError, match="optim.schedule must be"):
        optimizer_lib.make_optimizer(optim_config(schedule="linear"), {"a": "dense"}, total_steps=10)

    params = {"a": jnp.zeros((4,))}
    grads = {"a": jnp.full((4,), 10.0)}  # Global norm 20.
    # With b1 = b2 = 0 and a large eps, Adam's update is about -lr * g / eps, so clipping shows in it.
    for clip, g in ((1.0, 0.5), (0.0, 10.0)):
        optimizer, _ = optimizer_lib.make_optimizer(optim_config(clip_grad_norm=clip, b1=0.0, b2=0.0, eps=1e3),
                                                 {"a": "dense"}, total_steps=10)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        np.testing.assert_allclose(updates["a"], np.full(4, -1e-2 * g / (g + 1e3)), rtol=1e-5)

    accumulated, _ = optimizer_lib.make_optimizer(optim_config(accumulate_steps=2), {"a": "dense"}, total_steps=10)
    history = _run(accumulated, params, 4)
    np.testing.assert_array_equal(history[0]["a"], params["a"])  # No update after the first micro-batch.
    assert not np.allclose(history[1]["a"], params["a"])
    np.testing.assert_array_equal(history[2]["a"], history[1]["a"])


def _numpy_loss(logits, masks, alpha=0.25, gamma=2.0):
    """Spec §5.3 on one mask, already cropped to its valid region."""
    p = 1 / (1 + np.exp(-logits))
    dice = 1 - (2 * np.sum(p * masks) + 1) / (np.sum(p) + np.sum(masks) + 1)
    bce = -(masks * np.log(p) + (1 - masks) * np.log(1 - p))
    p_t = p * masks + (1 - p) * (1 - masks)
    alpha_t = alpha * masks + (1 - alpha) * (1 - masks)
    return dice + np.mean(alpha_t * (1 - p_t) ** gamma * bce)


def test_loss_matches_the_spec_formula_on_the_valid_region_only():
    rng = np.random.default_rng(0)
    low_res = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    masks = (rng.uniform(size=(2, 3, 32, 32)) > 0.5).astype(np.float32)
    image_size = np.array([[[32, 20]] * 3, [[17, 32]] * 3], np.int32)
    loss, parts = losses.refsam_loss(jnp.asarray(low_res), jnp.asarray(masks), jnp.asarray(image_size))
    upsampled = np.asarray(losses.upsample_logits(jnp.asarray(low_res), 32), np.float64)
    expected = np.mean([_numpy_loss(upsampled[b, t, :h, :w], masks[b, t, :h, :w])
                        for b in range(2) for t in range(3) for h, w in [image_size[b, t]]])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(parts["dice"] + parts["focal"]), expected, rtol=1e-5)

    padded_masks = masks.copy()
    padded_masks[0, :, :, 20:] = 1 - padded_masks[0, :, :, 20:]
    padded_masks[1, :, 17:, :] = 1 - padded_masks[1, :, 17:, :]
    same, _ = losses.refsam_loss(jnp.asarray(low_res), jnp.asarray(padded_masks), jnp.asarray(image_size))
    np.testing.assert_allclose(float(same), float(loss), rtol=1e-6)

    sharp = jnp.asarray(1e3 * low_res)
    perfect, _ = losses.refsam_loss(sharp, (losses.upsample_logits(sharp, 32) > 0).astype(jnp.float32),
                                    jnp.asarray(image_size))
    assert float(perfect) < 0.01 < 0.5 < float(loss)


def test_mesh_and_parameter_shardings():
    mesh = sharding_lib.make_mesh({"data": -1, "fsdp": 1})
    assert mesh.axis_names == ("data", "fsdp") and mesh.size == jax.device_count()
    with pytest.raises(ValueError, match="unknown axes"):
        sharding_lib.make_mesh({"model": 1})
    with pytest.raises(ValueError, match="at most one -1"):
        sharding_lib.make_mesh({"data": -1, "fsdp": -1})
    fsdp_mesh = jax.sharding.AbstractMesh((4, 2), ("data", "fsdp"))
    spec = lambda shape, minimum: sharding_lib.array_sharding(shape, fsdp_mesh, minimum).spec
    assert spec((6, 4, 3), 10) == jax.sharding.PartitionSpec(("fsdp"), None, None)
    assert spec((3, 5), 10) == jax.sharding.PartitionSpec()  # No dimension divisible by 2.
    assert spec((6, 4), 100) == jax.sharding.PartitionSpec()  # Below the size threshold.
    assert spec((6, 4), -1) == jax.sharding.PartitionSpec()  # FSDP off.


def test_loss_of_several_sentences_per_clip_counts_the_valid_ones():
    rng = np.random.default_rng(1)
    low_res = rng.normal(size=(2, 3, 2, 8, 8)).astype(np.float32)  # [B, K, T, 4g, 4g]
    masks = (rng.uniform(size=(2, 3, 2, 32, 32)) > 0.5).astype(np.float32)
    image_size = np.array([[[32, 20]] * 2, [[17, 32]] * 2], np.int32)  # [B, T, 2]: the clip's, for every sentence
    valid = np.array([[True, True, False], [True, False, False]])
    loss, _ = losses.refsam_loss(jnp.asarray(low_res), jnp.asarray(masks), jnp.asarray(image_size), jnp.asarray(valid))
    upsampled = np.asarray(losses.upsample_logits(jnp.asarray(low_res), 32), np.float64)
    expected = np.mean([_numpy_loss(upsampled[b, k, t, :h, :w], masks[b, k, t, :h, :w])
                        for b in range(2) for k in range(3) if valid[b, k]
                        for t in range(2) for h, w in [image_size[b, t]]])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
