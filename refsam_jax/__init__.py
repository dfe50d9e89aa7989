"""RefSAM (Segment Anything for referring video object segmentation) in JAX / Flax NNX.

    seg = refsam_jax.load("exported/demo")           # or a training workdir
    masks = seg.segment("clip.mp4", "the red circle")  # bool [T, H, W]

`load` and `Segmenter` are imported on first use, so that the light command lines (data, evaluation)
do not import the model stack.
"""

import importlib

_API = {"load": "refsam_jax.segmenter", "Segmenter": "refsam_jax.segmenter"}


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'refsam_jax' has no attribute {name!r}")


__all__ = list(_API)
