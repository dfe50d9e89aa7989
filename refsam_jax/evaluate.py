"""Evaluates a trained RefSAM: Ref-YouTube-VOS held-out J&F, Ref-DAVIS17 J&F, or the Ref-YouTube-VOS valid zip.

    python -m refsam_jax.evaluate --workdir runs/refytvos [--config configs/refytvos.py] --dataset ytvos_heldout
    python -m refsam_jax.evaluate --workdir runs/refytvos --dataset davis --data_dir tfds --manual_dir ref-davis
    python -m refsam_jax.evaluate --workdir runs/refytvos --dataset ytvos_valid

The model is the latest checkpoint of `<workdir>/checkpoints` (`--untrained`: the model as training
initialises it), built from `--config` or `<workdir>/config.json`. Its data settings (`config.data`, or the
synthetic data under `<workdir>/data` when `config.synthetic.enabled`) locate Ref-YouTube-VOS;
`--data_dir` / `--manual_dir` override them (Ref-DAVIS17 needs them: the training config names Ref-YTVOS).

Datasets (inference protocol in inference.py; masks are `logit > --threshold`, by default the run's
`config.eval.threshold`, as during training):
  ytvos_heldout  train videos held out of training: J, F, J&F per expression (MeViS protocol,
                 DATASETS.md §1.6), reported as "local", never as Ref-YTVOS valid.
  davis          Ref-DAVIS17 valid: per expression set, each frame's objects merged into an index PNG (a
                 pixel goes to the object of highest logit above the threshold), scored with the official
                 unsupervised DAVIS J&F; the number is the mean over the 4 sets (DATASETS.md §2.3). With the
                 config's eval.davis_shared_track, an object's 4 expressions share one track state.
  ytvos_valid    Ref-YouTube-VOS valid: 0/255 PNGs for every expression and frame, zipped for the server.
Outputs go to `--out` (default `<workdir>/eval/<dataset>/step_<N>`): `predictions/`, `results.json`
and a per-expression (or per-object) CSV, or `submission.zip`.

Multi-process (one process per host, as train.py: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID, or `--multihost` for JAX's auto-detection on TPU pods and SLURM): each process segments
its share of the videos on its first device, the scores are gathered, and process 0 writes the results,
identical to a one-process run (docs/multihost.md).
"""

import json
import os
import time
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from refsam_jax import cli, inference, paths, processes
from refsam_jax.data import write_synthetic_data
from refsam_jax.data.pipeline import builder_config
from refsam_jax.evaluation.video import evaluate_davis, evaluate_ytvos_heldout, predict_ytvos_valid
from refsam_jax.segmenter import Segmenter
from refsam_jax.trees import DTYPES

DATASETS = ("ytvos_heldout", "davis", "ytvos_valid")


def define_flags() -> dict:
    """The command line's flags (defined only when run as a program, so importing this module defines none)."""
    return {
        "workdir": flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/, config.json)."),
        "config": config_flags.DEFINE_config_file("config", None,
                                                  "Training config file (default: <workdir>/config.json)."),
        "dataset": flags.DEFINE_enum("dataset", "ytvos_heldout", DATASETS, "What to evaluate on."),
        "out": flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval/<dataset>/step_<N>)."),
        "untrained": flags.DEFINE_bool("untrained", False, "Evaluate the model at initialisation instead."),
        "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.data.data_dir)."),
        "manual_dir": flags.DEFINE_string("manual_dir", None, "Raw dataset folder (default: config.data.manual_dir)."),
        "threshold": flags.DEFINE_float("threshold", None, "Mask = logit > threshold (default: the run's "
                                        "config.eval.threshold; official: 0.01 / 0.1)."),
        "chunk_size": flags.DEFINE_integer("chunk_size", 8, "Frames per model call."),
        "expression_batch": flags.DEFINE_integer("expression_batch", 4, "Expressions decoded together."),
        "dtype": flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Compute dtype of SAM's image encoder."),
        "max_videos": flags.DEFINE_integer("max_videos", 0, "Evaluate only the first N videos (0: all)."),
        "valid_videos": flags.DEFINE_integer(
            "valid_videos", 202, "ytvos_valid: videos the valid-minus-test split must have (the competition's "
            "202; 0: no check, for other trees). Checked before any inference."),
        "multihost": flags.DEFINE_bool("multihost", False, "Join a multi-process run that JAX auto-detects (TPU "
                                       "pods, SLURM); JAX_COORDINATOR_ADDRESS etc. imply it."),
    }


def data_locations(config, workdir: str, data_dir: Optional[str], manual_dir: Optional[str]) -> Tuple[str, str]:
    """(TFDS data dir, raw folder): the flags, else the config's, else the synthetic data of the run."""
    if config.get("synthetic") and config.synthetic.enabled and not (data_dir or config.data.data_dir):
        write_synthetic_data(config, workdir)  # Already written by training: only locates (and checks) it.
    return data_dir or config.data.data_dir, manual_dir or config.data.manual_dir


def evaluate(loaded, dataset: str, workdir: str, out_dir: Optional[str] = None, *,
             data_dir: Optional[str] = None, manual_dir: Optional[str] = None, threshold: Optional[float] = None,
             chunk_size: int = 8, expression_batch: int = 4, max_videos: int = 0,
             valid_videos: int = 202) -> Dict[str, object]:
    """Runs one evaluation of `loaded` (an `inference.LoadedModel`); writes its outputs and returns a summary.
    Masks are `logit > threshold` (None: the run's `config.eval.threshold`)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    config = loaded.config
    out_dir = out_dir or os.path.join(workdir, "eval", dataset, f"step_{loaded.step}")
    data_dir, manual_dir = data_locations(config, workdir, data_dir, manual_dir)
    if not data_dir:
        raise ValueError("no TFDS data dir: set --data_dir (or config.data.data_dir)")
    if dataset in ("davis", "ytvos_valid") and not manual_dir:
        raise ValueError(f"--dataset {dataset} needs the raw dataset folder: set --manual_dir")
    if dataset == "ytvos_heldout" and config.data.name != "ref_youtube_vos":
        raise ValueError(f"ytvos_heldout is the held-out split of a ref_youtube_vos training run; this config "
                         f"trains on {config.data.name!r}")
    ytvos_config = builder_config("ref_youtube_vos", config.data)  # The run's held-out fraction and seed.
    os.makedirs(out_dir, exist_ok=True)
    # Each process segments its share of the videos on its first device (evaluation.video).
    segmenter = Segmenter(loaded, threshold=threshold, chunk_size=chunk_size, expression_batch=expression_batch,
                          devices=jax.local_devices()[:1] if jax.process_count() > 1 else None)
    start = time.perf_counter()
    summary: Dict[str, object] = {"dataset": dataset, "model": loaded.source, "step": loaded.step,
                                  "threshold": segmenter.threshold, "out": out_dir,
                                  "dtype": jnp.dtype(loaded.model.sam.image_encoder.dtype).name}
    if dataset == "ytvos_heldout":
        result = evaluate_ytvos_heldout(segmenter, data_dir, os.path.join(out_dir, "predictions"),
                                        manual_dir=manual_dir or None, builder_config=ytvos_config,
                                        max_videos=max_videos)
        if jax.process_index() == 0:
            result.write_csv(os.path.join(out_dir, "per_expression.csv"))
        summary.update(result.summary())
    elif dataset == "davis":
        shared_track = bool(config.get("eval", {}).get("davis_shared_track", False))
        summary["davis_shared_track"] = shared_track
        result = evaluate_davis(segmenter, data_dir, manual_dir, os.path.join(out_dir, "predictions"),
                                max_videos=max_videos, shared_track=shared_track)
        if jax.process_index() == 0:
            result.write_csv(os.path.join(out_dir, "per_object.csv"))
        summary.update(result.summary())
    else:
        synthetic = bool(config.get("synthetic") and config.synthetic.enabled)
        expected = None if synthetic or not valid_videos else valid_videos
        report = predict_ytvos_valid(segmenter, data_dir, manual_dir, out_dir, builder_config=ytvos_config,
                                     expected_num_videos=expected)
        summary.update(report.summary(), zip=os.path.join(out_dir, "submission.zip"))
    summary["seconds"] = time.perf_counter() - start
    tokenizer = loaded.text_encoder.tokenizer  # Sentences cut at max_length, on any process.
    summary["truncated_expressions"] = len(set().union(*processes.allgather("truncated", sorted(tokenizer.truncated))))
    summary["max_text_length"] = tokenizer.max_length
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def format_summary(summary: Dict[str, object]) -> str:
    """One line: J&F, J, F and counts (or the zip written), and how many expressions were cut."""
    truncated = (f"; {summary['truncated_expressions']} expressions cut at {summary['max_text_length']} tokens"
                 if summary.get("truncated_expressions") else "")
    return _format_result(summary) + truncated


def _format_result(summary: Dict[str, object]) -> str:
    if "JF" in summary:
        counts = (f"{summary['num_expressions']} expressions, {summary['num_videos']} videos"
                  if "num_expressions" in summary else f"{summary['num_sequences']} videos, "
                  f"{summary['num_objects']} objects x 4 expression sets")
        return (f"{summary['dataset']} ({summary['model']}): J&F {summary['JF']:.4f}  J {summary['J']:.4f}  "
                f"F {summary['F']:.4f}  ({counts}, {summary['seconds']:.1f} s)")
    return (f"{summary['dataset']} ({summary['model']}): wrote {summary['zip']} ({summary['num_files']} masks, "
            f"{summary['num_videos']} videos, {summary['seconds']:.1f} s)")


def main(argv, flag_values: dict):
    del argv  # cli.run rejects extra arguments.
    value = {name: holder.value for name, holder in flag_values.items()}
    processes.initialize(value["multihost"])  # Before any other JAX call.
    value.update({name: paths.absolute(value[name]) for name in ("workdir", "out", "data_dir", "manual_dir")
                  if value[name]})
    if not value["workdir"]:
        raise app.UsageError("--workdir is required")
    checkpoint_dir, workdir = inference.checkpoint_location(value["workdir"])
    config = inference.training_config(value["config"], workdir)
    loaded = inference.load_model(config, None if value["untrained"] else checkpoint_dir, dtype=value["dtype"])
    summary = evaluate(loaded, value["dataset"], workdir or value["workdir"], value["out"],
                       data_dir=value["data_dir"], manual_dir=value["manual_dir"], threshold=value["threshold"],
                       chunk_size=value["chunk_size"], expression_batch=value["expression_batch"],
                       max_videos=value["max_videos"], valid_videos=value["valid_videos"])
    if jax.process_index() == 0:
        print(format_summary(summary))
        print(f"outputs: {summary['out']}")


if __name__ == "__main__":
    _flag_values = define_flags()
    cli.run(lambda argv: main(argv, _flag_values))
