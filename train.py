"""Trains RefSAM.

    python train.py --config configs/refytvos.py --workdir runs/refytvos [--config.optim.lr.mask_decoder=1e-6 ...]

The config file's `get_config()` gives every key; `--config.<key>=<value>` overrides any of them (an unknown
key is an error). A run resumes from the latest checkpoint in `--workdir`. Metrics go to
`<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.
"""

import difflib
import runpy
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from refsam_jax.train import checkpoint
from refsam_jax.train import loop
from refsam_jax.train import metrics_writer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a Python file with get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; a run there is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def _unknown_override(argv) -> str:
    """Names the first `--config.<key>` override whose key the config file does not have."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[argv.index("--config") + 1]
    if config_arg is None:
        return ""
    path, _, arg = config_arg.partition(":")
    config = runpy.run_path(path)["get_config"](*([arg] if arg else []))
    for key in (a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")):
        node = config
        for i, part in enumerate(key.split(".")):
            if not hasattr(node, "keys") or part not in node.keys():
                known = list(node.keys()) if hasattr(node, "keys") else []
                close = difflib.get_close_matches(part, known, n=3)
                prefix = ".".join(key.split(".")[:i])
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                where = f"config.{prefix}" if prefix else "the config"
                return f"unknown config key --config.{key}: {where} has no key {part!r}{hint}"
            node = node[part]
    return ""


def parse_flags(argv):
    """absl flag parsing that turns an override of an unknown config key into a one-line error."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        message = _unknown_override(argv) or f"bad --config override: {e}"
        print(f"{argv[0]}: {message}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"{argv[0]}: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(metrics_writer.quiet_orbax_info)
    try:
        summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (FloatingPointError, checkpoint.CheckpointMismatchError, PermissionError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    logging.info("finished at step %d; last loss %.4f; evaluations %s", summary.step,
                 summary.losses[max(summary.losses)] if summary.losses else float("nan"), summary.evaluations)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
