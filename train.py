"""Trains RefSAM, or SAM alone: what `config.task` names ("refsam", `refsam_jax.task`; "sam", `refsam_jax.sam_task`).

    python train.py --config configs/refytvos.py --workdir runs/refytvos [--config.optim.lr.mask_decoder=1e-6 ...]
    python train.py --config configs/sam_demo.py --workdir runs/sam     # the trained SAM in runs/sam/sam

The config file's `get_config()` gives every key; `--config.<key>=<value>` overrides any of them (an unknown
key is an error). A run resumes from the latest checkpoint in `--workdir`. Metrics go to
`<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.
"""

from absl import flags, logging
from ml_collections import config_flags

from refsam_jax import cli, sam_task, task
from refsam_jax.train import metrics_writer

TRAINERS = {"refsam": task.train_and_evaluate, "sam": sam_task.train_sam}  # config.task -> what trains it

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a Python file with get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; a run there is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.run rejects extra arguments.
    logging.get_absl_handler().addFilter(metrics_writer.quiet_orbax_info)
    config = _CONFIG.value
    name = config.get("task", "refsam")  # A config saved before `task` existed is RefSAM's.
    if name not in TRAINERS:
        raise ValueError(f"config.task must be one of {', '.join(TRAINERS)}, got {name!r}")
    summary = TRAINERS[name](config, _WORKDIR.value)
    logging.info("finished at step %d; last loss %.4f; evaluations %s", summary.step,
                 summary.losses[max(summary.losses)] if summary.losses else float("nan"), summary.evaluations)


if __name__ == "__main__":
    cli.run(main)
