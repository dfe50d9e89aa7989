"""Config grids, as the paper's Fig. 6 ablations: one training run per combination, one table.

`run_sweep(config, workdir, grid, train_fn=...)` runs the combinations one after the other, each in
`<workdir>/<key=value+...>/` (a finished or interrupted run is resumed, not redone). The final loss of a run
is the mean training loss of its last `average_last` steps. The command line is `python -m refsam_jax.sweep`.
"""

import csv
import itertools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib
import ml_collections
from absl import logging

matplotlib.use("Agg")  # Files only, no display.
import matplotlib.pyplot as plt  # noqa: E402

from refsam_jax.train import loop, metrics_writer


def parse_grid(config: ml_collections.ConfigDict, specs: Sequence[str]) -> List[Tuple[str, List[Any]]]:
    """['optim.lr.mlp=1e-3,1e-4'] -> [('optim.lr.mlp', [0.001, 0.0001])], values cast to the key's type."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {spec!r}: expected 'key=value1,value2,...'")
        current = get_key(config, key.strip())
        grid.append((key.strip(), [_cast(value.strip(), current, key) for value in values.split(",")]))
    return grid


def get_key(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            prefix = ".".join(key.split(".")[:i]) or "the config"
            raise KeyError(f"unknown config key {key!r}: {prefix} has no key {part!r}")
        node = node[part]
    return node


def _set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _cast(text: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"{text!r} is not true/false")
            return text.lower() == "true"
        if isinstance(current, (int, float, str)):
            return type(current)(text)
    except ValueError as e:
        raise ValueError(f"--grid {key}: {e}") from e
    raise ValueError(f"--grid {key}: only number, bool and string keys can be swept, not {type(current).__name__}")


def run_name(assignment: Sequence[Tuple[str, Any]]) -> str:
    """[('optim.lr.mlp', 0.001), ('seed', 1)] -> 'mlp=0.001+seed=1' (no ',': data paths are ','-separated)."""
    return "+".join(f"{key.split('.')[-1] if key.startswith('optim.lr.') else key}={value:g}"
                    if isinstance(value, float) else f"{key}={value}" for key, value in assignment)


def final_loss(workdir: str, average_last: int) -> float:
    losses = [record["loss"] for record in metrics_writer.read_metrics(workdir) if "loss" in record]
    if not losses:
        raise ValueError(f"no training loss logged in {workdir}/metrics.jsonl")
    tail = losses[-average_last:]
    return sum(tail) / len(tail)


Arm = Tuple[str, Sequence[Tuple[str, Any]]]  # (name, [(config key, value), ...])


def grid_arms(grid: Sequence[Tuple[str, List[Any]]]) -> List[Arm]:
    """Every combination of `grid`, named by `run_name`."""
    keys = [key for key, _ in grid]
    combinations = [list(zip(keys, values)) for values in itertools.product(*(values for _, values in grid))]
    return [(run_name(assignment), assignment) for assignment in combinations]


def run_arms(config: ml_collections.ConfigDict, workdir: str, arms: Sequence[Arm], steps: Optional[int] = None,
             average_last: int = 10, *, train_fn: Callable[[ml_collections.ConfigDict, str], loop.TrainSummary],
             name_column: bool = True) -> List[Dict[str, Any]]:
    """Trains `config` with the overrides of every arm, each with `train_fn(config, <workdir>/<arm name>)`;
    returns one row per arm: its name (`name_column`), the overridden values, final_loss, the trainable
    parameter count (when the run reports it) and the last evaluation's metrics."""
    if steps is not None and any(key == "total_steps" for _, assignment in arms for key, _ in assignment):
        raise ValueError("total_steps is swept in --grid: do not also give --steps")
    rows = []
    for name, assignment in arms:
        run_config = config.copy_and_resolve_references()
        with run_config.unlocked():
            for key, value in assignment:
                get_key(run_config, key)  # An unknown key is an error, not a new key.
                _set_key(run_config, key, value)
            if steps is not None:
                run_config.total_steps = steps
            run_config.log_every = 1
        run_dir = os.path.join(workdir, name)
        logging.info("sweep run %s", run_dir)
        summary = train_fn(run_config, run_dir)
        row = ({"arm": name} if name_column else {}) | dict(assignment)
        row["final_loss"] = final_loss(run_dir, average_last)
        if summary.trainable_params:
            row["trainable_params"] = summary.trainable_params
        for step in sorted(summary.evaluations)[-1:]:
            row.update({f"eval/{metric}": value for metric, value in summary.evaluations[step].items()})
        rows.append(row)
    return rows


def run_sweep(config: ml_collections.ConfigDict, workdir: str, grid: Sequence[Tuple[str, List[Any]]],
              steps: Optional[int] = None, average_last: int = 10, *,
              train_fn: Callable[[ml_collections.ConfigDict, str], loop.TrainSummary]) -> List[Dict[str, Any]]:
    """Trains every combination of `grid` (`run_arms` over `grid_arms`); rows hold the grid values."""
    return run_arms(config, workdir, grid_arms(grid), steps, average_last, train_fn=train_fn, name_column=False)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cells = [[f"{row.get(c, ''):.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    columns = list(dict.fromkeys(column for row in rows for column in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """The rows as a Markdown table."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_rows(rows: Sequence[Dict[str, Any]], names: Sequence[str], path: str,
              metrics: Sequence[str] = ("eval/J&F", "final_loss")) -> None:
    """One bar chart per metric the rows have (a panel each), a bar per row labelled by `names`; a PNG."""
    metrics = [m for m in metrics if any(m in row for row in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 + 0.9 * len(rows) * len(metrics), 4.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = [row.get(metric, float("nan")) for row in rows]
        bars = axis.bar(range(len(rows)), values, color="tab:blue" if metric.startswith("eval") else "tab:orange")
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
        axis.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=9)
        axis.set_title(metric)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
