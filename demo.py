"""The one-command demo: RefSAM's real workflow in miniature, in minutes on 2 CPU cores.

    python demo.py [--workdir demo_out] [--ytvos_root DIR] [--config.<key>=...] [--sam_config.<key>=...]

data     a synthetic Ref-YouTube-VOS of moving coloured shapes described by sentences (`<workdir>/data/raw`), or
         with `--ytvos_root` a Ref-YouTube-VOS-format tree of your own (its train split), built into
         `<workdir>/data/tfds`. The builder's default split holds some training videos out (`heldout`); neither
         stage ever trains on them.
stage 1  SAM: a small SAM trained from scratch, class-agnostically, on every object of the training frames
         (configs/sam_demo.py; SA-1B's role for the real SAM) -> `<workdir>/sam_stage/sam`.
stage 2  RefSAM on that SAM with its image encoder frozen, as the paper does (configs/demo.py) -> `<workdir>`
         is its workdir (`<workdir>/checkpoints`).
results  held-out J&F of RefSAM as initialised, trained, and of an all-empty prediction (frames without the
         object score 1, so that is the floor); one PNG strip per held-out video, ground truth against
         prediction (`<workdir>/strips/`); the overlay of one held-out video (`<workdir>/overlay/overlay.gif`, .mp4)
         whose frames are copied to `<workdir>/heldout_video/` to try `predict` on.
The last line printed is one JSON object: heldout_JF_untrained, heldout_JF_trained, heldout_JF_empty, seconds.
A rerun with the same workdir resumes (or skips) each stage.
"""

import csv
import importlib.resources
import json
import os
import shutil
import time

import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image

from refsam_jax import cli, evaluate, inference, predict, sam_task, task, visualize
from refsam_jax.data import iterate_eval_videos, write_synthetic_data
from refsam_jax.data.pipeline import builder_config, prepare
from refsam_jax.evaluation.video import EmptyPrediction, evaluate_ytvos_heldout, video_groups

_CONFIGS = importlib.resources.files("refsam_jax.configs")
_CONFIG = config_flags.DEFINE_config_file("config", str(_CONFIGS / "demo.py"), "Stage 2: the RefSAM config.")
_SAM_CONFIG = config_flags.DEFINE_config_file("sam_config", str(_CONFIGS / "sam_demo.py"), "Stage 1: the SAM config.")
_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the data, checkpoints and outputs go.")
_YTVOS_ROOT = flags.DEFINE_string("ytvos_root", None, "A Ref-YouTube-VOS-format tree to use instead of the "
                                  "synthetic one (train/JPEGImages, train/Annotations, meta_expressions/train).")
EXPRESSION_BATCH = 4  # One decoder program serves the evaluations and the overlay.
DISPLAY_LONG_SIDE = 512  # The overlay and strips are drawn at least this large.
SAM_STAGE = "sam_stage"  # <workdir>/sam_stage: stage 1's run


def locate_data(config, sam_config, workdir: str, ytvos_root) -> None:
    """Points both stages at the same built dataset: the synthetic one (written unless there) or `ytvos_root`."""
    if ytvos_root:
        with config.unlocked():
            config.synthetic.enabled = False
            config.data.manual_dir = os.path.abspath(ytvos_root)
            config.data.data_dir = os.path.join(workdir, "data", "tfds")
        prepare(config)
    else:
        write_synthetic_data(config, workdir)
    with sam_config.unlocked():
        sam_config.synthetic.enabled = False
        for key in ("name", "manual_dir", "data_dir", "heldout_fraction", "heldout_seed"):
            sam_config.data[key] = config.data[key]


def write_strips(config, predictions: str, scores_csv: str, out: str) -> list:
    """One PNG per held-out video under `out`: every expression's ground truth against its masks in `predictions`
    (`<video>/<exp_id>/<frame>.png`), captioned with its J&F from `scores_csv`."""
    with open(scores_csv, newline="") as f:
        scores = {(row["video"], row["exp_id"]): float(row["JF"]) for row in csv.DictReader(f)}
    os.makedirs(out, exist_ok=True)
    paths = []
    items = iterate_eval_videos("ref_youtube_vos", config.data.data_dir, "heldout",
                                builder_config=builder_config("ref_youtube_vos", config.data))
    for video, expressions in video_groups(items):
        names = expressions[0].frame_names
        predicted = [[np.asarray(Image.open(os.path.join(predictions, video, e.expression_id, f"{name}.png"))) > 127
                      for name in names] for e in expressions]
        captions = [f"{e.sentence}   (J&F {scores[video, e.expression_id]:.2f})" for e in expressions]
        strip = visualize.comparison_strip(np.stack(list(expressions[0].frames)), [e.masks for e in expressions],
                                           predicted, captions, names, cell_long_side=DISPLAY_LONG_SIDE // 3)
        paths.append(os.path.join(out, f"{video}.png"))
        Image.fromarray(strip).save(paths[-1])
    return paths


def run_demo(config, sam_config, workdir: str, ytvos_root=None) -> dict:
    """Runs the stages of the module docstring; returns the numbers it prints."""
    start = time.perf_counter()
    locate_data(config, sam_config, workdir, ytvos_root)
    with sam_config.unlocked():
        sam_config.eval.at_start = False  # Stage 1 reports its held-out mIoU once, trained.
    sam_summary = sam_task.train_sam(sam_config, os.path.join(workdir, SAM_STAGE))
    sam_dir = os.path.join(workdir, SAM_STAGE, sam_task.SAM_DIR)
    sam_seconds = time.perf_counter() - start
    with config.unlocked():
        config.model.sam.checkpoint = sam_dir
        config.eval.at_start = False  # The held-out evaluation runs below, through the inference engine.
        config.eval.at_end = False
    summary = task.train_and_evaluate(config, workdir)
    train_seconds = time.perf_counter() - start - sam_seconds
    results, models = {}, {}
    for name, checkpoint_dir in (("untrained", None), ("trained", os.path.join(workdir, "checkpoints"))):
        models[name] = inference.load_model(config, checkpoint_dir,
                                            text_encoder=models["untrained"].text_encoder if models else None)
        results[name] = evaluate.evaluate(models[name], "ytvos_heldout", workdir, expression_batch=EXPRESSION_BATCH)
        print(evaluate.format_summary(results[name]), flush=True)
    results["empty"] = evaluate_ytvos_heldout(EmptyPrediction(), config.data.data_dir, progress=False,
                                              builder_config=builder_config("ref_youtube_vos", config.data)).summary()
    trained_dir = results["trained"]["out"]
    strips = write_strips(config, os.path.join(trained_dir, "predictions"),
                          os.path.join(trained_dir, "per_expression.csv"), os.path.join(workdir, "strips"))
    items = iterate_eval_videos("ref_youtube_vos", config.data.data_dir, "heldout",
                                builder_config=builder_config("ref_youtube_vos", config.data))
    video, expressions = next(video_groups(items))
    sentences = [item.sentence for item in expressions]
    frames_dir = os.path.join(workdir, "heldout_video")  # A clip to try `predict` on (README).
    shutil.copytree(os.path.join(config.data.manual_dir, "train", "JPEGImages", video), frames_dir,
                    dirs_exist_ok=True)
    overlay = predict.predict(frames_dir, sentences, os.path.join(workdir, "overlay"), models["trained"],
                              expression_batch=EXPRESSION_BATCH, fps=4, overlay_min_side=DISPLAY_LONG_SIDE)
    sam_mIoU = sam_summary.evaluations.get(sam_summary.step, {}).get("mIoU_1pt")
    return {"train_steps": summary.step, "sam_steps": sam_summary.step, "sam_mIoU": sam_mIoU,
            "sam_seconds": sam_seconds, "train_seconds": train_seconds,
            "results": results, "strips": strips, "overlay": overlay["overlay"], "overlay_video": video,
            "sentences": sentences, "seconds": time.perf_counter() - start}


def main(argv):
    del argv  # cli.run rejects extra arguments.
    outcome = run_demo(_CONFIG.value, _SAM_CONFIG.value, os.path.abspath(_WORKDIR.value), _YTVOS_ROOT.value)
    results = outcome["results"]
    trained = results["trained"]
    print()
    if outcome["sam_mIoU"] is not None:
        print(f"Stage 1: SAM after {outcome['sam_steps']} steps, held-out mIoU from one click "
              f"{outcome['sam_mIoU']:.3f}")
    print(f"Held-out videos ({trained['num_videos']} videos, {trained['num_expressions']} expressions, never "
          f"trained on), masks = logit > {trained['threshold']:g}:")
    for name, result in (("all-empty prediction", results["empty"]), ("untrained (initialisation)",
                         results["untrained"]), (f"trained ({trained['step']} steps)", trained)):
        print(f"  {name:<28} J&F {result['JF']:.3f}   J {result['J']:.3f}   F {result['F']:.3f}")
    print(f"Ground truth vs prediction, one strip per held-out video: {os.path.dirname(outcome['strips'][0])}/")
    print(f"Overlay of held-out video {outcome['overlay_video']} (frames copied to "
          f"{os.path.join(_WORKDIR.value, 'heldout_video')}; {'; '.join(outcome['sentences'])}):")
    for path in outcome["overlay"]:
        print(f"  {path}")
    print(f"Stage 1 (SAM): {outcome['sam_seconds']:.0f} s; stage 2 (RefSAM): {outcome['train_seconds']:.0f} s; "
          f"total wall time {outcome['seconds']:.0f} s ({outcome['seconds'] / 60:.1f} min).")
    print(json.dumps({"heldout_JF_untrained": results["untrained"]["JF"], "heldout_JF_trained": trained["JF"],
                      "heldout_JF_empty": results["empty"]["JF"], "seconds": round(outcome["seconds"], 1)}))


if __name__ == "__main__":
    cli.run(main)
