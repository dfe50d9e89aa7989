"""The training loop: checks, sharded state, jitted steps, metrics, checkpoints and resumption.

`train(config, workdir, build_task)` is model-agnostic: a `Task` says how to build the model, what the
loss is and where the batches come from (RefSAM's is `refsam_jax.task.RefSamTask`).

Everything that can be wrong with the input (workdir permissions, trainable rules, optimizer groups, a
checkpoint of another model, the batch size vs the mesh) is checked on the abstract model
(`nnx.eval_shape`) before any weight is created or any step is compiled.
"""

import abc
import dataclasses
import math
import os
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from refsam_jax import checkpoint as checkpoint_lib
from refsam_jax import processes
from refsam_jax.train import metrics_writer as metrics_lib
from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.train import sharding as sharding_lib
from refsam_jax.train import step as step_lib
from refsam_jax.trees import cast_floating, named_dtype


class Task(abc.ABC):
    """What to train: subclass it, and set the three attributes in `__init__`.

    Attributes:
      model_config: JSON-able description of the architecture, stored in checkpoints and compared on resume.
      global_batch_size: clips per step over all hosts.
      frames_per_clip: for the frames/s figure.
      model_config_defaults: optional; each key's default, for the keys a checkpoint's `model_config` lacks
        because it was saved before they existed (`checkpoint.check_model_config`).

    The loop calls `build_model` (first under `nnx.eval_shape` for the checks), `load_pretrained`,
    `load_other_frozen`, `train_iterator`, then per step `prepare_batch` on the host and `loss_fn` inside
    the jitted step; `evaluate` before (`config.eval.at_start`) and after training.
    """

    model_config: Mapping[str, Any]
    global_batch_size: int
    frames_per_clip: int = 1
    model_config_defaults: Optional[Mapping[str, Any]] = None

    @abc.abstractmethod
    def build_model(self) -> nnx.Module:
        """The model with fresh weights; must be traceable by `nnx.eval_shape`."""

    @abc.abstractmethod
    def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], **other_frozen):
        """`-> (loss, metrics)`, see `step.py`; `other_frozen` are the states of `load_other_frozen`."""

    @abc.abstractmethod
    def train_iterator(self, shard_index: int, shard_count: int,
                       first_step: int = 0) -> Iterator[Mapping[str, np.ndarray]]:
        """A checkpointable grain iterator of this host's numpy batches, from the batch of `first_step` (a run
        resumed on another number of processes, whose saved iterator states do not apply)."""

    def load_pretrained(self, model: nnx.Module) -> None:
        """Fills a built model with converted checkpoints (SAM, ...), in place."""

    def load_other_frozen(self) -> Mapping[str, Any]:
        """The frozen states handed to `loss_fn` by name (e.g. a text encoder's); called after the checks."""
        return {}

    def prepare_batch(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Host-side transform of each batch before it is sharded (e.g. a text-feature cache)."""
        return batch

    def check_split(self, split: optimizer_lib.TrainableSplit) -> None:
        """Raises if the trainable/frozen split (of the abstract model) is not one this task can train."""

    def evaluate(self, model: nnx.Module) -> Optional[Dict[str, float]]:
        """`{metric: value}` of the model, or None when the task has no evaluation."""
        return None

    def host_metrics(self) -> Dict[str, float]:
        """Scalars the host tracks (e.g. how much of the data was cut), logged with each step's metrics."""
        return {}


@dataclasses.dataclass
class TrainSummary:
    """What a finished run reports: the last step, the loss of every step run here, and compilations."""

    step: int
    losses: Dict[int, float]
    compilations: int
    resumed_from: Optional[int]
    evaluations: Dict[int, Dict[str, float]] = dataclasses.field(default_factory=dict)
    trainable_params: int = 0


def base_config() -> ml_collections.ConfigDict:
    """The task-independent training keys; configs/*.py start from it and add `model`, `data`, ...

    `optim.lr` and `optim.weight_decay` map each trainable group (named by the `trainable` rules) to its
    value. `total_steps` counts batches; with `optim.accumulate_steps` = k the optimizer updates every k.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 1000
    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.async_checkpointing = True
    config.progress_bar = True
    config.compute_dtype = "float32"
    config.multihost = False  # join a multi-process run (auto-detected; JAX_COORDINATOR_ADDRESS implies it)
    config.heartbeat_timeout_s = 60  # a multi-process run fails this long after losing a process
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.sharding = ml_collections.ConfigDict({"fsdp_min_size": 2**20})
    config.trainable = ()
    config.optim = ml_collections.ConfigDict({
        "lr": ml_collections.ConfigDict(), "weight_decay": ml_collections.ConfigDict(),
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "schedule": "constant", "warmup_steps": 0, "end_lr_factor": 0.0,
        "clip_grad_norm": 0.0, "accumulate_steps": 1})
    config.init = ml_collections.ConfigDict({"checkpoint_dir": ""})
    config.eval = ml_collections.ConfigDict({"at_start": False, "at_end": True})
    return config


def check_workdir(workdir: str) -> None:
    """Creates `workdir` and checks that it is writable (before any compute)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
            pass
    except OSError as e:
        raise PermissionError(f"workdir {workdir} is not writable: {e}") from e


def compute_dtype(config: ml_collections.ConfigDict):
    return named_dtype(config.compute_dtype, "config.compute_dtype")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
    problems = []
    for key in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[key]) < 1:
            problems.append(f"config.{key} must be >= 1, got {config[key]}")
    if problems:
        raise ValueError("; ".join(problems))


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _abstract_state(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class _StepLog:
    """Per-step metrics fetched one step late (so host and device overlap), NaN check, periodic logging.

    Throughput (clips/s, frames/s) is measured between the completions of logged windows of steps, from
    the completion of the run's first step on (so compilation is not counted).
    """

    def __init__(self, config, writer, progress, schedules, clips_per_step, frames_per_step, origin: str = "",
                 host_metrics: Callable[[], Dict[str, float]] = dict):
        self._config, self._writer, self._progress = config, writer, progress
        self._host_metrics = host_metrics
        self.origin = origin  # Named in the NaN error, e.g. the checkpoint a resumed run came from.
        self._schedules, self._clips, self._frames = schedules, clips_per_step, frames_per_step
        self._pending = None
        self._window: List[Dict[str, float]] = []
        self._timed_steps = 0
        self._window_start = None
        self.losses: Dict[int, float] = {}

    def add(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        self.flush()
        self._pending = (step, metrics)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        values = step_lib.metrics_to_host(metrics)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"the loss is {values['loss']} at step {step}{self.origin}: training stopped "
                                     f"(metrics: {values})")
        now = time.perf_counter()
        if self._window_start is None:
            self._window_start = now  # The first step (with its compilation) is not timed.
        else:
            self._timed_steps += 1
        self.losses[step] = values["loss"]
        self._progress.update(values["loss"])
        self._window.append(values)
        if step % self._config.log_every == 0 or step == self._config.total_steps:
            scalars = {name: float(np.mean([w[name] for w in self._window])) for name in self._window[0]}
            lrs = optimizer_lib.learning_rates(self._schedules, step - 1, self._config.optim.accumulate_steps)
            scalars.update({f"lr/{group}": lr for group, lr in lrs.items()})
            scalars.update(self._host_metrics())
            if self._timed_steps:
                elapsed = now - self._window_start
                scalars["clips_per_s"] = self._timed_steps * self._clips / elapsed
                scalars["frames_per_s"] = self._timed_steps * self._frames / elapsed
                self._timed_steps, self._window_start = 0, now
            self._writer.write_scalars(step, scalars)
            logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
            self._window = []


def train(config: ml_collections.ConfigDict, workdir: str,
          build_task: Callable[[ml_collections.ConfigDict, str], Task]) -> TrainSummary:
    """Trains `build_task(config, workdir)` for `config.total_steps` steps, resuming from `workdir` if possible."""
    processes.initialize(config.multihost, config.heartbeat_timeout_s)  # Before any other JAX call.
    workdir = os.path.abspath(workdir)
    check_workdir(workdir)
    _check_schedule(config)
    dtype = compute_dtype(config)
    mesh = sharding_lib.make_mesh(config.mesh)
    task = build_task(config, workdir)
    sharding_lib.check_batch_size(task.global_batch_size, mesh)

    # Checks on the abstract model: no weights, no compute.
    abstract = optimizer_lib.split_trainable(nnx.eval_shape(task.build_model), config.trainable)
    task.check_split(abstract)
    optimizer, schedules = optimizer_lib.make_optimizer(config.optim, abstract.labels, config.total_steps)
    trainable_shapes = checkpoint_lib.describe_params(abstract.trainable)
    checkpointer = checkpoint_lib.TrainCheckpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpointing)
    resume_step = checkpointer.latest_step()
    optimizer_structure = checkpoint_lib.optimizer_structure(config.optim)
    saved_meta = checkpointer.read_meta(resume_step) if resume_step is not None else {}
    if resume_step is not None:
        checkpoint_lib.check_meta(saved_meta, task.model_config, trainable_shapes,
                                  source=f"checkpoint {checkpointer.directory}/{resume_step}",
                                  optimizer=optimizer_structure, model_defaults=task.model_config_defaults)
    meta = {"model_config": task.model_config, "trainable_shapes": trainable_shapes, "optimizer": optimizer_structure,
            "processes": jax.process_count()}
    if jax.process_index() == 0:  # After the checks, so a rejected run leaves the workdir's config as it was.
        with open(os.path.join(workdir, "config.json"), "w") as f:  # `predict` / `evaluate` read it.
            f.write(config.to_json_best_effort(indent=2))
    logging.info("trainable parameters per group: %s", optimizer_lib.group_sizes(abstract.trainable, abstract.labels))

    # Weights: the frozen ones always come from the converted/initial checkpoints, the trainable ones from
    # this run's latest checkpoint when it resumes.
    model = task.build_model()
    task.load_pretrained(model)
    if config.init.checkpoint_dir:
        init_step = checkpoint_lib.load_trained_params(model, config.init.checkpoint_dir, task.model_config,
                                                       model_defaults=task.model_config_defaults)
        logging.info("initialised the model from %s (step %d)", config.init.checkpoint_dir, init_step)
    split = optimizer_lib.split_trainable(model, config.trainable)
    split = dataclasses.replace(split, trainable=step_lib.strong_types(split.trainable),
                                frozen=step_lib.strong_types(split.frozen))
    del model

    replicated = sharding_lib.replicated(mesh)
    trainable_sharding = sharding_lib.tree_shardings(split.trainable, mesh, config.sharding.fsdp_min_size)
    frozen = cast_floating({"model": split.frozen, **task.load_other_frozen()}, dtype)
    frozen_sharding = sharding_lib.tree_shardings(frozen, mesh, config.sharding.fsdp_min_size)
    abstract_opt_state = jax.eval_shape(optimizer.init, split.trainable)
    opt_sharding = step_lib.opt_state_shardings(
        optimizer, abstract_opt_state,
        lambda shape: sharding_lib.array_sharding(shape, mesh, config.sharding.fsdp_min_size), replicated)
    shardings = step_lib.StepShardings(trainable=trainable_sharding, frozen=frozen_sharding, opt_state=opt_sharding,
                                       batch=sharding_lib.batch_sharding(mesh), metrics=replicated)

    # A checkpoint saved by another number of processes resumes its data from the step, not the iterators.
    same_processes = resume_step is None or saved_meta.get("processes", 1) == jax.process_count()
    iterator = task.train_iterator(jax.process_index(), jax.process_count(), 0 if same_processes else resume_step)
    if resume_step is None:
        trainable = jax.device_put(split.trainable, trainable_sharding)
        opt_state = jax.jit(optimizer.init, out_shardings=opt_sharding)(trainable)
        step = 0
    else:
        trainable, opt_state = checkpointer.restore(
            resume_step, _abstract_state(split.trainable, trainable_sharding),
            _abstract_state(abstract_opt_state, opt_sharding), iterator if same_processes else None)
        step = resume_step
        logging.info("resumed from %s/%d", checkpointer.directory, resume_step)
    frozen = jax.device_put(frozen, frozen_sharding)
    graphdef, labels = split.graphdef, split.labels
    del split

    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, labels, optimizer, task.loss_fn, compute_dtype=dtype), shardings)
    writer = metrics_lib.MetricsWriter(workdir, resumed_from=resume_step)
    evaluations = {}

    def evaluate():
        results = task.evaluate(nnx.merge(graphdef, trainable, frozen["model"]))
        if results is not None:
            writer.write_scalars(step, {f"eval/{name}": value for name, value in results.items()})
            logging.info("evaluation at step %d: %s", step, results)
            evaluations[step] = results

    if resume_step is None and config.eval.at_start:
        evaluate()
    progress = metrics_lib.Progress(config.total_steps, step, enabled=config.progress_bar)
    log = _StepLog(config, writer, progress, schedules, task.global_batch_size,
                   task.global_batch_size * task.frames_per_clip,
                   origin=f" (this run resumed from {checkpointer.directory}/{resume_step})" if resume_step else "",
                   host_metrics=task.host_metrics)
    def next_batch():
        return sharding_lib.global_batch(task.prepare_batch(next(iterator)), shardings.batch)

    run_step, batch = train_step, None
    if jax.process_count() > 1 and step < config.total_steps:
        # Every process compiles before any of them starts the step's collectives.
        batch = next_batch()
        run_step = train_step.lower(trainable, frozen, opt_state, batch).compile()
        processes.barrier("train step compiled", timeout_s=3600)
    try:
        while step < config.total_steps:
            batch = next_batch() if batch is None else batch
            trainable, opt_state, metrics = run_step(trainable, frozen, opt_state, batch)
            batch = None
            step += 1
            log.add(step, metrics)
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                log.flush()
                if not bool(_all_finite(trainable)):
                    raise FloatingPointError(
                        f"the trainable parameters are not finite after step {step}{log.origin}: training stopped "
                        f"without saving them (latest checkpoint: {checkpointer.latest_step()})")
                checkpointer.save(step, trainable, opt_state, iterator, meta)
        log.flush()
        progress.close()
        if config.eval.at_end:
            evaluate()
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
        progress.close()
        writer.close()
    return TrainSummary(step=step, losses=log.losses,
                        compilations=train_step._cache_size() if run_step is train_step else 1,
                        resumed_from=resume_step, evaluations=evaluations,
                        trainable_params=sum(optimizer_lib.group_sizes(trainable, labels).values()))
