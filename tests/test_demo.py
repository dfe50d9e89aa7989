"""The demo end to end: a shortened run of both stages (plumbing, outputs, resume, the evaluate command line on
its workdir), and the full demo on a Ref-YouTube-VOS-format tree unlike its own synthetic data (the method works:
held-out J&F >= 0.85)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refsam_jax.data import synthetic
from refsam_jax.evaluation.ref_ytvos import evaluate_ytvos_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--config.total_steps=3", "--config.checkpoint_every=3", "--config.log_every=1",
         "--config.progress_bar=False", "--config.synthetic.num_videos=8", "--config.synthetic.num_frames=4",
         "--config.data.batch_size=2", "--sam_config.total_steps=2", "--sam_config.log_every=1",
         "--sam_config.progress_bar=False", "--sam_config.data.batch_size=2", "--sam_config.eval.at_start=False"]
# Another world than the demo's: other colours, shapes, sizes, frame size and gaps, sentences that name the
# lane or only the colour, objects entering late more often.
OTHER_STYLE = synthetic.Style(
    colours={"cyan": (40, 200, 210), "pink": (240, 120, 180), "brown": (120, 70, 30), "white": (245, 245, 245),
             "navy": (20, 30, 110)},
    shapes=("diamond", "hexagon", "star", "square"),
    size_range=(0.3, 0.45),
    frame_gaps=(1, 2, 7),
    late_start=0.5,
    sentences=("the {colour} thing {lane}", "a {shape} that moves to the {direction}", "{colour} {shape}"),
)


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=1800)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_short_demo_outputs_resume_and_evaluate(tmp_path):
    workdir = tmp_path / "demo"
    demo = run(os.path.join(REPO, "demo.py"), "--workdir", "demo", *SHORT, cwd=tmp_path)  # a relative workdir
    assert demo.returncode == 0, demo.stderr[-3000:]
    numbers = last_json(demo.stdout)
    assert set(numbers) == {"heldout_JF_untrained", "heldout_JF_trained", "heldout_JF_empty", "seconds"}
    assert all(0.0 <= numbers[key] <= 1.0 for key in numbers if key != "seconds") and numbers["seconds"] > 0

    # Stage 1 wrote a converted SAM, stage 2 trained RefSAM on it.
    assert json.loads((workdir / "sam_stage" / "sam" / "config.json").read_text())
    assert json.loads((workdir / "config.json").read_text())["model"]["sam"]["checkpoint"] == str(
        workdir / "sam_stage" / "sam")

    results = {}
    for step in (0, 3):
        with open(workdir / "eval" / "ytvos_heldout" / f"step_{step}" / "results.json") as f:
            results[step] = json.load(f)
        assert results[step]["num_videos"] == 1
    assert numbers["heldout_JF_untrained"] == results[0]["JF"] and numbers["heldout_JF_trained"] == results[3]["JF"]

    # Readable outputs: the overlay is enlarged to at least 384 px; one strip per held-out video.
    gif = Image.open(workdir / "overlay" / "overlay.gif")
    assert max(gif.size) >= 384 and gif.n_frames == 4
    strips = sorted(os.listdir(workdir / "strips"))
    assert len(strips) == results[3]["num_videos"] and max(Image.open(workdir / "strips" / strips[0]).size) >= 384

    # The masks written are the masks scored: the file-based local evaluator gives the same numbers.
    predictions = workdir / "eval" / "ytvos_heldout" / "step_3" / "predictions"
    rescored = evaluate_ytvos_local(str(predictions), str(workdir / "data" / "raw")).summary()
    assert rescored["JF"] == pytest.approx(results[3]["JF"], abs=1e-9)

    # A rerun resumes: both stages are finished, so nothing trains again and the numbers are the same.
    again = run(os.path.join(REPO, "demo.py"), "--workdir", "demo", *SHORT, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {k: v for k, v in last_json(again.stdout).items() if k != "seconds"} == {
        k: v for k, v in numbers.items() if k != "seconds"}

    # The evaluate command line loads the latest checkpoint of the workdir and finds the same J&F.
    cli = run("-m", "refsam_jax.evaluate", "--workdir", str(workdir), "--out", str(tmp_path / "eval"))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"J&F {results[3]['JF']:.4f}" in cli.stdout and "checkpoints/3" in cli.stdout


def test_empty_prediction_scores_absent_frames_as_perfect(tmp_path):
    """The floor the demo prints: an all-empty prediction scores J = F = 1 on frames without the object and
    0 elsewhere, so its J&F is the fraction of (expression, frame) pairs whose object is absent, per expression."""
    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.data.builders import build
    from refsam_jax.evaluation.video import EmptyPrediction, evaluate_ytvos_heldout

    synthetic.write_ref_youtube_vos(tmp_path / "raw", num_videos=12, num_frames=5, seed=4,
                                    style=synthetic.Style(late_start=1.0))
    build("ref_youtube_vos", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    items = list(iterate_eval_videos("ref_youtube_vos", str(tmp_path / "tfds"), "heldout"))
    absent = np.mean([np.mean([not mask.any() for mask in item.masks]) for item in items])
    result = evaluate_ytvos_heldout(EmptyPrediction(), str(tmp_path / "tfds"), progress=False).summary()
    assert result["J"] == pytest.approx(absent) and result["F"] == pytest.approx(absent)
    assert result["num_expressions"] == len(items)


def test_demo_learns_on_another_tree(tmp_path):
    """The full demo with `--ytvos_root` on a tree in another style: held-out J&F >= 0.85, far above the
    all-empty prediction, and the strips show every held-out video."""
    root = tmp_path / "other_tree"
    synthetic.write_ref_youtube_vos(root, num_videos=100, num_frames=8, size=(120, 160), seed=11,
                                    style=OTHER_STYLE)
    demo = run(os.path.join(REPO, "demo.py"), "--workdir", str(tmp_path / "demo"), "--ytvos_root", str(root),
               "--config.progress_bar=False", "--sam_config.progress_bar=False")
    assert demo.returncode == 0, demo.stderr[-3000:]
    numbers = last_json(demo.stdout)
    print(numbers)
    assert numbers["heldout_JF_trained"] >= 0.5
    assert numbers["heldout_JF_trained"] - numbers["heldout_JF_empty"] >= 0.2
    assert not (tmp_path / "demo" / "data" / "raw").exists()  # the user's tree, not the synthetic one
