"""The one-command demo: synthetic Ref-YouTube-VOS -> train -> held-out J&F, untrained vs trained -> overlay.

    python demo.py [--workdir demo_out] [--config.total_steps=300 ...]

1. writes a synthetic Ref-YouTube-VOS of moving coloured shapes to `<workdir>/data` and trains
   configs/demo.py on it (tiny random SAM, the all-MiniLM-L6-v2 text encoder; minutes on 2 CPU cores);
2. evaluates the model as initialised and the trained model on the held-out synthetic videos (never
   trained on) and prints their J&F;
3. copies the frames of one held-out video to `<workdir>/heldout_video/` and writes
   `<workdir>/overlay/overlay.gif` (and .mp4): the trained model on that video.
A rerun with the same workdir resumes (or skips) training. `--config.<key>=<value>` overrides the config.
"""

import importlib.resources
import os
import shutil
import time

from absl import flags
from ml_collections import config_flags

from refsam_jax import cli, evaluate, inference, predict, task
from refsam_jax.data import iterate_eval_videos
from refsam_jax.data.pipeline import builder_config
from refsam_jax.evaluation.video import video_groups

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(importlib.resources.files("refsam_jax.configs") / "demo.py"), "Demo config file.")
_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the data, checkpoints and outputs go.")
EXPRESSION_BATCH = 4  # One decoder program serves the evaluations and the overlay.


def run_demo(config, workdir: str) -> dict:
    """Trains and evaluates as the module docstring says; returns the numbers it prints."""
    start = time.perf_counter()
    with config.unlocked():  # The held-out evaluation runs below, through the inference engine.
        config.eval.at_start = False
        config.eval.at_end = False
    summary = task.train_and_evaluate(config, workdir)
    train_seconds = time.perf_counter() - start
    results, models = {}, {}
    for name, checkpoint_dir in (("untrained", None), ("trained", os.path.join(workdir, "checkpoints"))):
        models[name] = inference.load_model(config, checkpoint_dir,
                                            text_encoder=models["untrained"].text_encoder if models else None)
        results[name] = evaluate.evaluate(models[name], "ytvos_heldout", workdir, expression_batch=EXPRESSION_BATCH)
        print(evaluate.format_summary(results[name]), flush=True)
    items = iterate_eval_videos("ref_youtube_vos", config.data.data_dir, "heldout",
                                builder_config=builder_config("ref_youtube_vos", config.data))
    video, expressions = next(video_groups(items))
    sentences = [item.sentence for item in expressions]
    frames_dir = os.path.join(workdir, "heldout_video")  # A clip to try `predict` on (README).
    shutil.copytree(os.path.join(config.data.manual_dir, "train", "JPEGImages", video), frames_dir,
                    dirs_exist_ok=True)
    overlay = predict.predict(frames_dir, sentences, os.path.join(workdir, "overlay"), models["trained"],
                              expression_batch=EXPRESSION_BATCH, fps=4)
    return {"train_steps": summary.step, "train_seconds": train_seconds, "results": results,
            "overlay": overlay["overlay"], "overlay_video": video, "sentences": sentences,
            "seconds": time.perf_counter() - start}


def main(argv):
    del argv  # cli.run rejects extra arguments.
    start = time.perf_counter()
    outcome = run_demo(_CONFIG.value, os.path.abspath(_WORKDIR.value))
    untrained, trained = outcome["results"]["untrained"], outcome["results"]["trained"]
    print()
    print(f"Held-out synthetic videos ({trained['num_videos']} videos, {trained['num_expressions']} expressions, "
          f"never trained on), masks = logit > {trained['threshold']:g}:")
    for name, result in (("untrained (initialisation)", untrained), (f"trained ({trained['step']} steps)", trained)):
        print(f"  {name:<28} J&F {result['JF']:.3f}   J {result['J']:.3f}   F {result['F']:.3f}")
    print(f"Overlay of held-out video {outcome['overlay_video']} (frames copied to "
          f"{os.path.join(_WORKDIR.value, 'heldout_video')}; {'; '.join(outcome['sentences'])}):")
    for path in outcome["overlay"]:
        print(f"  {path}")
    total = time.perf_counter() - start
    print(f"Training: {outcome['train_seconds']:.0f} s; total wall time {total:.0f} s ({total / 60:.1f} min).")


if __name__ == "__main__":
    cli.run(main)
