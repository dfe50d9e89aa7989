"""Trains RefSAM over config grids or the paper's ablations: one run per arm, one table and one plot.

    python -m refsam_jax.sweep --config configs/demo.py --workdir runs/sweep \\
        --grid 'optim.lr.mlp=1e-3,1e-4' --grid 'optim.lr.mask_decoder=1e-5,1e-6' --steps 200
    python -m refsam_jax.sweep --config configs/demo.py --workdir runs/components --preset components

`--grid` runs every combination of the values; `--preset` runs named arms (`configs/ablations.py`:
components, mlp_depth, learning_rates). Runs go one after the other in this process, each in
`<workdir>/<arm>/` (a finished or interrupted run is resumed, not redone), and are evaluated as their
config says (the demo: held-out J&F). The final loss of a run is the mean training loss of its last
`--average_last` steps. The table is printed and written to `<workdir>/sweep.csv` and `sweep.md`, the
bar charts (held-out J&F, final loss) to `<workdir>/sweep.png`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from refsam_jax import cli, paths, task
from refsam_jax.configs.ablations import PRESETS
from refsam_jax.train import loop, metrics_writer, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one sub-directory per run.")
_GRID = flags.DEFINE_multi_string("grid", [], "'key=v1,v2,...': values of one config key; repeat for a grid.")
_PRESET = flags.DEFINE_enum("preset", None, list(PRESETS), "A paper ablation (configs/ablations.py), not a grid.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's total_steps).")
_AVERAGE_LAST = flags.DEFINE_integer("average_last", 10, "Steps averaged into a run's final loss.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.run rejects extra arguments.
    if bool(_GRID.value) == bool(_PRESET.value):
        raise app.UsageError("give either --grid 'key=v1,v2,...' (repeatable) or --preset")
    logging.get_absl_handler().addFilter(metrics_writer.quiet_orbax_info)
    config = _CONFIG.value
    if _PRESET.value:
        arms = PRESETS[_PRESET.value](config)
    else:
        try:
            arms = sweep.grid_arms(sweep.parse_grid(config, _GRID.value))
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            sys.exit(2)
    workdir = paths.absolute(_WORKDIR.value)
    loop.check_workdir(workdir)
    rows = sweep.run_arms(config, workdir, arms, _STEPS.value, _AVERAGE_LAST.value,
                          train_fn=task.train_and_evaluate, name_column=bool(_PRESET.value))
    sweep.write_csv(rows, os.path.join(workdir, "sweep.csv"))
    sweep.write_markdown(rows, os.path.join(workdir, "sweep.md"))
    sweep.plot_rows(rows, [name for name, _ in arms], os.path.join(workdir, "sweep.png"))
    print(sweep.format_table(rows))


if __name__ == "__main__":
    cli.run(main)
