"""Trains RefSAM over a grid of config values, as the paper's Fig. 6 ablations: one run per combination.

    python -m refsam_jax.sweep --config configs/demo.py --workdir runs/sweep \\
        --grid 'optim.lr.mlp=1e-3,1e-4' --grid 'optim.lr.mask_decoder=1e-5,1e-6' --steps 200

Runs go one after the other in this process, each in `<workdir>/<key=value+...>/` (a finished or interrupted
run is resumed, not redone). The final loss of a run is the mean training loss of its last
`--average_last` steps; the table is printed and written to `<workdir>/sweep.csv`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from refsam_jax import cli, paths, task
from refsam_jax.train import loop, metrics_writer, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one sub-directory per run.")
_GRID = flags.DEFINE_multi_string("grid", [], "'key=v1,v2,...': values of one config key; repeat for a grid.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's total_steps).")
_AVERAGE_LAST = flags.DEFINE_integer("average_last", 10, "Steps averaged into a run's final loss.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.run rejects extra arguments.
    if not _GRID.value:
        raise app.UsageError("give at least one --grid 'key=v1,v2,...'")
    logging.get_absl_handler().addFilter(metrics_writer.quiet_orbax_info)
    config = _CONFIG.value
    try:
        grid = sweep.parse_grid(config, _GRID.value)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        sys.exit(2)
    workdir = paths.absolute(_WORKDIR.value)
    loop.check_workdir(workdir)
    rows = sweep.run_sweep(config, workdir, grid, _STEPS.value, _AVERAGE_LAST.value,
                           train_fn=task.train_and_evaluate)
    sweep.write_csv(rows, os.path.join(workdir, "sweep.csv"))
    print(sweep.format_table(rows))


if __name__ == "__main__":
    cli.run(main)
