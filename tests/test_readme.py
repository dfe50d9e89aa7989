"""The README's commands, run as a new user types them: in a fresh folder, with relative paths, in order.

Rules (stated in the README): every command of a ```bash block runs as written with this interpreter's
environment first on PATH, in one temporary folder that holds links to the clone's user-facing files
(`demo.py`, `train.py`, `configs`, `convert`); the only changes are
  - `pip install ... &&` / a lone `pip install` line is left out (installing is `.ci/run`'s job), and so is
    `bash .ci/run` (it is this test's own command);
  - `--config.total_steps=20` is appended to `python demo.py` and `python train.py` commands, and
    `--sam_config.total_steps=20` (its stage 1) to `python demo.py`.
A command that ends with `# needs: FILE ...` reads files no machine here has: its `--help` must print the
usage, and run as written it must exit non-zero with one line (no traceback) that names one of those files.
"""

import os
import re
import shlex
import subprocess
import sys
from typing import List, NamedTuple, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_FILES = ("demo.py", "train.py", "configs", "convert")
SHORT_RUN = "--config.total_steps=20"
SHORT_DEMO = f"{SHORT_RUN} --sam_config.total_steps=20"
TIMEOUT_S = 900


class Command(NamedTuple):
    text: str  # as written, continuation lines joined
    needs: Tuple[str, ...]  # files it reads that no machine here has


def readme_commands(markdown: str) -> List[Command]:
    """The commands of every ```bash block of `markdown`, in order."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        text = ""
        for line in block.splitlines():
            if not text and (not line.strip() or line.lstrip().startswith("#")):
                continue
            text = f"{text} {line.strip()}" if text else line.rstrip()
            if text.endswith("\\"):
                text = text[:-1].rstrip()
                continue
            command, _, needs = text.partition("  # needs:")
            commands.append(Command(command.strip(), tuple(needs.split())))
            text = ""
    return commands


def prepare_workdir(folder: str) -> None:
    for name in USER_FILES:
        os.symlink(os.path.join(ROOT, name), os.path.join(folder, name))


def user_environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def as_run(command: str) -> str:
    """The command the test runs for `command` ('' for none), following the module docstring's rules."""
    if command.startswith("pip install"):
        command = command.partition("&&")[2].strip()
    if command == "bash .ci/run":
        return ""
    words = shlex.split(command)
    python = next((i for i, w in enumerate(words) if w == "python"), None)
    if python is not None and python + 1 < len(words) and words[python + 1] in ("demo.py", "train.py"):
        command += f" {SHORT_DEMO if words[python + 1] == 'demo.py' else SHORT_RUN}"
    return command


def run(command: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=user_environment(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def check_command(command: Command, cwd: str) -> None:
    """Runs one README command as the module docstring says; fails with the command and its output."""
    to_run = as_run(command.text)
    if not to_run:
        return
    if not command.needs:
        result = run(to_run, cwd)
        assert result.returncode == 0, f"README command failed ({result.returncode}): {command.text}\n" \
                                       f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
        return
    for path in command.needs:
        assert not os.path.exists(os.path.join(cwd, path)), f"{path} exists: '# needs:' is wrong for {command.text}"
    helped = run(to_run + " --help", cwd)  # absl exits with status 1 after printing the help, argparse with 0.
    assert helped.returncode in (0, 1) and "Traceback" not in helped.stderr and \
        re.search(r"usage|flags:", helped.stdout + helped.stderr, re.I), \
        f"--help failed for {command.text}:\n{helped.stderr[-3000:]}"
    result = run(to_run, cwd)
    assert result.returncode != 0, f"{command.text} succeeded without {command.needs}"
    assert "Traceback" not in result.stderr, f"{command.text} ended in a traceback:\n{result.stderr[-3000:]}"
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, f"{command.text}: expected one error line, got:\n{result.stderr[-3000:]}"
    assert any(path in errors[0] for path in command.needs), \
        f"{command.text}: the error names none of {command.needs}: {errors[0]}"


def test_readme_commands_run_as_written(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        commands = readme_commands(f.read())
    assert any(c.text.endswith("python demo.py --workdir demo_out") for c in commands)
    assert "bash .ci/run" in [c.text for c in commands]
    prepare_workdir(str(tmp_path))
    for command in commands:
        check_command(command, str(tmp_path))
    assert os.path.isfile(tmp_path / "demo_out" / "overlay" / "overlay.gif")
    assert os.path.isfile(tmp_path / "runs" / "sweep" / "sweep.csv")


def test_a_broken_readme_command_is_caught(tmp_path):
    commands = readme_commands(
        "```bash\n"
        "# comment lines are skipped\n"
        "python -m refsam_jax.data build --name ref_davis17 \\\n"
        "    --manual_dir no_such_tree --data_dir tfds\n"
        "python -m refsam_jax.data build --name ref_davis17 --manual_dir davis --data_dir tfds  # needs: davis\n"
        "```\n")
    assert commands == [
        Command("python -m refsam_jax.data build --name ref_davis17 --manual_dir no_such_tree --data_dir tfds", ()),
        Command("python -m refsam_jax.data build --name ref_davis17 --manual_dir davis --data_dir tfds", ("davis",))]
    with pytest.raises(AssertionError, match="README command failed"):
        check_command(commands[0], str(tmp_path))
    check_command(commands[1], str(tmp_path))  # a missing raw tree: one line naming it, no traceback


def test_short_run_override_only_for_training_commands():
    assert as_run("pip install -e '.[demo]' && python demo.py --workdir demo_out") == \
        f"python demo.py --workdir demo_out {SHORT_DEMO}"
    assert as_run("XLA_FLAGS=x python train.py --config c") == f"XLA_FLAGS=x python train.py --config c {SHORT_RUN}"
    assert as_run("python -m refsam_jax.evaluate --workdir demo_out") == "python -m refsam_jax.evaluate --workdir demo_out"
    assert as_run("bash .ci/run") == ""
