"""Data: TFDS builders (array_record, no TensorFlow), the grain training pipeline, evaluation
sources and a synthetic-data writer for Ref-YouTube-VOS, Ref-DAVIS17 and RefCOCO/+/g.

  builders/     raw layout -> array_record records (`build`, `open_split`)
  pipeline.py   `make_train_loader`, `default_data_config`, `prepare`, `write_synthetic_data`
  eval_source   `iterate_eval_videos`
  sampling.py, augment.py   clip sampling and augmentation
  synthetic.py  raw layouts of moving coloured shapes, for tests and the demo
  coco_masks.py COCO polygons/RLE -> masks, equal to pycocotools
Build from the command line: `python -m refsam_jax.data --help`.
"""

from refsam_jax.data.eval_source import EvalExpression, iterate_eval_videos
from refsam_jax.data.pipeline import default_data_config, make_train_loader, prepare, write_synthetic_data

__all__ = ["EvalExpression", "default_data_config", "iterate_eval_videos", "make_train_loader", "prepare",
           "write_synthetic_data"]
