"""Training metrics to `<workdir>/metrics.jsonl` and TensorBoard event files, plus a progress bar.

Only process 0 writes. One JSON object per logged step: {"step": s, "loss": ..., "grad_norm/<group>": ...,
"lr/<group>": ..., "clips_per_s": ..., "frames_per_s": ...}, and one per evaluation ({"step": s, "eval/J&F": ...};
TensorBoard tags spell '&' as '_and_').
"""

import json
import logging
import os
import sys
from typing import Mapping, Optional

import jax
import tensorboardX
import tqdm


class MetricsWriter:
    """Appends scalars to metrics.jsonl and to TensorBoard events under `workdir`.

    `resumed_from`: the step a resumed run continues from; rows of later steps (written by the interrupted
    run after its last checkpoint), and evaluations at that step (the resumed run evaluates again), are
    dropped, so every step has one row of each kind. None: a fresh run, which drops all earlier rows.
    """

    def __init__(self, workdir: str, resumed_from: Optional[int] = None):
        self._active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            _keep_rows_until(self.path, resumed_from)
            self._jsonl = open(self.path, "a")
            self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name.replace("&", "_and_"), float(value), global_step=int(step))

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tensorboard.close()


def _keep_rows_until(path: str, last_step: Optional[int]) -> None:
    """Rewrites `path` (atomically) without the rows after `last_step` and its evaluations (all rows when None)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]

    def keep(row) -> bool:
        is_evaluation = any(key.startswith("eval/") for key in row)
        return row["step"] < last_step or (row["step"] == last_step and not is_evaluation)

    kept = [line for line in lines if last_step is not None and keep(json.loads(line))]
    if len(kept) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def quiet_orbax_info(record: logging.LogRecord) -> bool:
    """Log filter: orbax's INFO lines (a dozen per checkpoint) are dropped, its warnings kept."""
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def read_metrics(workdir: str) -> list:
    """The logged records of `<workdir>/metrics.jsonl`, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm bar over the training steps (rate and ETA), shown by process 0 only."""

    def __init__(self, total_steps: int, initial_step: int, enabled: bool = True):
        self._bar: Optional[tqdm.tqdm] = None
        if enabled and jax.process_index() == 0:
            self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                  file=sys.stderr, smoothing=0.1)

    def update(self, loss: Optional[float] = None) -> None:
        if self._bar is not None:
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
