"""Imports the PyTorch reference packages (`segment_anything`) for conversion checks and parity tests.

`segment_anything` imports torchvision at package import time, for a PIL resize in `ResizeLongestSide` and
for NMS in the automatic mask generator. No CPU torchvision build matching torch 2.13 can be installed on
our machines, and SAM's model code is pure torch, so when torchvision is absent a minimal stand-in module
is registered while `segment_anything` is imported, and removed afterwards so that other libraries
(transformers probes for torchvision) never see it: PIL bilinear resize (what torchvision does for PIL
images) and `to_pil_image` for uint8 HWC arrays. The NMS functions raise if called. Our own code never
uses this module.
"""

import sys
import types

import numpy as np
from PIL import Image


def _install_torchvision_standin() -> None:
    def to_pil_image(pic):
        return Image.fromarray(np.asarray(pic))

    def resize(img, size, interpolation=None, max_size=None, antialias=True):
        if not isinstance(img, Image.Image):
            raise TypeError("torchvision stand-in: resize only supports PIL images")
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def _unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in: box ops are not available")

    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize, functional.to_pil_image = resize, to_pil_image
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = boxes.box_area = _unavailable
    torchvision.transforms, transforms.functional = transforms, functional
    torchvision.ops, ops.boxes = ops, boxes
    torchvision.__is_standin__ = True
    for module in (torchvision, transforms, functional, ops, boxes):
        sys.modules[module.__name__] = module


def import_segment_anything():
    """Returns the `segment_anything` package, with a torchvision stand-in if torchvision is missing."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a build that does not match torch
        _remove_torchvision()
        _install_torchvision_standin()
    try:
        import segment_anything
    finally:
        if getattr(sys.modules.get("torchvision"), "__is_standin__", False):
            # segment_anything keeps the functions it imported; other libraries (transformers probes
            # for torchvision) must not find the stand-in afterwards.
            _remove_torchvision()
    return segment_anything


def _remove_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
