"""What the absl command lines share (train.py, demo.py, predict, evaluate, sweep).

`run(main)` parses the flags so that a `--config.<key>` override of a key the config file lacks is a
one-line error with the closest keys, and reports the errors that bad input raises as one line
(`error: ...`, exit status 1) instead of a traceback; `--debug` re-raises them with the traceback.
"""

import difflib
import os
import sys
from typing import Callable, List, Optional, Sequence

from absl import app, flags

from refsam_jax.checkpoint import CheckpointMismatchError
from refsam_jax.inference import load_config_file

# What bad input raises (VideoInputError, EvaluationInputError and DataError are ValueErrors).
INPUT_ERRORS = (FloatingPointError, CheckpointMismatchError, PermissionError, FileNotFoundError, ValueError)
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an input error instead of one line.")


def config_argument(argv: Sequence[str]) -> Optional[str]:
    """The value of `--config` (`path` or `path:argument`), or None."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[list(argv).index("--config") + 1]
    return config_arg


def unknown_override(argv: Sequence[str]) -> str:
    """Names the first `--config.<key>` override whose key the config file does not have ('' if none)."""
    config_arg = config_argument(argv)
    if config_arg is None:
        return ""
    config = load_config_file(config_arg)
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


def parse_flags(argv: List[str]) -> List[str]:
    """absl flag parsing with one-line errors (exit status 2) for bad flags, a missing config file and
    unknown config keys."""
    config_arg = config_argument(argv)
    if config_arg is not None and not os.path.isfile(config_arg.partition(":")[0]):
        print(f"{argv[0]}: config file {config_arg.partition(':')[0]} does not exist", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        message = unknown_override(argv) or f"bad --config override: {e}"
        print(f"{argv[0]}: {message}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"{argv[0]}: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[List[str]], None]) -> None:
    """`app.run(main)` with `parse_flags`; bad input (`INPUT_ERRORS`) ends as `error: <message>`, status 1."""

    def main_with_errors(argv: List[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            main(argv)
        except INPUT_ERRORS as e:
            if _DEBUG.value:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(main_with_errors, flags_parser=parse_flags)
