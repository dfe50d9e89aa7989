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
    """Appends scalars to metrics.jsonl and to TensorBoard events under `workdir`."""

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if self._active:
            os.makedirs(workdir, exist_ok=True)
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
