"""Synthetic data in the exact raw layouts of Ref-YouTube-VOS, Ref-DAVIS17 and RefCOCO (DATASETS.md).

Each video (or image) shows 1-3 coloured shapes on a noisy background, each in its own horizontal
lane, moving left or right. Colours and shapes are distinct within a video, so every sentence ("a red
circle on the left", "the square moving to the right") names exactly one object and a model can
learn to segment from text. Masks are the polygons rasterised as pycocotools does, and the frames
are painted from those masks, so image and annotation agree pixel for pixel (before JPEG).

  write_ref_youtube_vos(root, ...)   train/{JPEGImages,Annotations,meta.json}, valid/ and test/JPEGImages,
                                     meta_expressions/{train,valid,test}/meta_expressions.json; `style`
                                     (`Style`) sets its colours, shapes, sizes, frame gaps and sentences
  write_ref_davis17(root, ...)       ReferFormer's converted layout + DAVIS/{Annotations_unsupervised,
                                     JPEGImages}/480p and DAVIS/ImageSets/2017/{train,val}.txt
  write_refcoco(root, dataset, ...)  train2014/*.jpg + <dataset>/instances_<dataset>_<split>.json
Each returns a manifest dict of what it wrote (ids, frame names, sentences, object ids).
"""

import dataclasses
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from etils import epath
from PIL import Image

from refsam_jax.data import coco_masks

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle")
LANE_NAMES = ("top", "middle", "bottom")
_LANE_PHRASES = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}
FRAME_GAPS = (5, 5, 5, 5, 5, 5, 3, 10)  # Mostly 5, sometimes 3 or 10 (DATASETS.md §1.4).
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128] + [255] * (768 - 21)


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> List[float]:
    """Polygon `[x0, y0, x1, y1, ...]` of a shape centred at (cx, cy) with half-size r: SHAPES, or "diamond",
    "hexagon", "star" (for data sets in another `Style`)."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    elif shape == "square":
        points = [(cx - r, cy - r), (cx - r, cy + r), (cx + r, cy + r), (cx + r, cy - r)]
    elif shape == "triangle":
        points = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
    elif shape in ("diamond", "hexagon"):
        corners = 4 if shape == "diamond" else 6
        points = [(cx + r * math.sin(2 * math.pi * i / corners), cy - r * math.cos(2 * math.pi * i / corners))
                  for i in range(corners)]
    elif shape == "star":
        points = [(cx + radius * math.sin(math.pi * i / 5), cy - radius * math.cos(math.pi * i / 5))
                  for i, radius in zip(range(10), [r, 0.45 * r] * 5)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [round(c, 2) for p in points for c in p]


def _rasterise(polygon: Sequence[float], h: int, w: int) -> np.ndarray:
    return coco_masks.segmentation_to_mask([list(polygon)], h, w)


@dataclasses.dataclass(frozen=True)
class Style:
    """How synthetic Ref-YouTube-VOS videos look and how their objects are described (defaults: the demo's).

    colours: name -> RGB; shapes: names `shape_polygon` draws; size_range: an object's half-size as a fraction of
    min(lane height, width / 3); frame_gaps: differences between consecutive frame numbers, drawn uniformly;
    late_start: the probability that an object after the first enters after the first frame; sentences: one
    expression per template, formatted with the object's colour, shape, side ("left" / "right", the half it
    stays in), direction ("left" / "right") and lane ("at the top", "in the middle", "at the bottom").
    """

    colours: Mapping[str, Tuple[int, int, int]] = dataclasses.field(default_factory=lambda: dict(COLOURS))
    shapes: Tuple[str, ...] = SHAPES
    size_range: Tuple[float, float] = (0.28, 0.42)
    frame_gaps: Tuple[int, ...] = FRAME_GAPS
    late_start: float = 0.3
    sentences: Tuple[str, ...] = ("a {colour} {shape} on the {side}", "the {shape} moving to the {direction}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, smoothly shaded float background `[h, w, 3]`."""
    base = rng.uniform(90, 160, size=3)
    ramp = np.linspace(-20, 20, w)[None, :, None] * rng.choice([-1, 1])
    return np.broadcast_to(base + ramp, (h, w, 3)).astype(np.float32)


def _objects(
    rng: np.random.Generator, h: int, w: int, count: int, num_frames: int, late_start: bool, style: Style = Style()
) -> List[Dict[str, Any]]:
    """`count` objects with distinct colour and shape, one lane each, each staying in its half
    (left or right) of the frame while it moves horizontally, so "on the left" holds in every frame."""
    colours = rng.choice(list(style.colours), size=count, replace=False)
    shapes = rng.choice(style.shapes, size=count, replace=False)
    lanes = rng.choice(3, size=count, replace=False)
    lane_h = h / 3
    objects = []
    for k in range(count):
        r = float(rng.uniform(*style.size_range) * min(lane_h, w / 3))
        cy = lane_h * (lanes[k] + 0.5)
        side = str(rng.choice(["left", "right"]))
        lo, hi = (r + 1, w / 2 - r - 1) if side == "left" else (w / 2 + r + 1, w - r - 1)
        direction = str(rng.choice(["left", "right"]))
        travel = float(rng.uniform(0.5, 1.0) * (hi - lo))
        x0 = float(rng.uniform(lo, hi - travel)) if direction == "right" else float(rng.uniform(lo + travel, hi))
        sign = 1.0 if direction == "right" else -1.0
        xs = [x0 + sign * travel * t / max(1, num_frames - 1) for t in range(num_frames)]
        start = (int(rng.integers(1, max(2, num_frames // 2)))
                 if late_start and k > 0 and rng.random() < style.late_start else 0)
        objects.append(
            {
                "obj_id": k + 1,
                "colour": str(colours[k]),
                "rgb": tuple(style.colours[str(colours[k])]),
                "shape": str(shapes[k]),
                "lane": LANE_NAMES[lanes[k]],
                "side": side,
                "direction": direction,
                "centres": [(x, cy) for x in xs],
                "radius": r,
                "start": start,
            }
        )
    return objects


def _render_video(rng: np.random.Generator, objects, num_frames: int, h: int, w: int):
    """Frames uint8 `[F, h, w, 3]` and label maps uint8 `[F, h, w]` (0 = background, k = object k)."""
    background = _background(rng, h, w)
    frames = np.empty([num_frames, h, w, 3], np.uint8)
    labels = np.zeros([num_frames, h, w], np.uint8)
    for t in range(num_frames):
        frame = background + rng.normal(0, 4, size=(h, w, 3))
        for obj in objects:
            if t < obj["start"]:
                continue
            cx, cy = obj["centres"][t]
            mask = _rasterise(shape_polygon(obj["shape"], cx, cy, obj["radius"]), h, w)
            frame[mask] = obj["rgb"] + rng.normal(0, 3, size=(int(mask.sum()), 3))
            labels[t][mask] = obj["obj_id"]
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames, labels


def _save_jpeg(path: epath.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(str(path), format="JPEG", quality=92)


def _save_palette_png(path: epath.Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels)
    image.putpalette(_PALETTE)
    image.save(str(path), format="PNG")


def _write_json(path: epath.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _frame_names(rng: np.random.Generator, num_frames: int, consecutive: bool,
                 gaps: Sequence[int] = FRAME_GAPS) -> List[str]:
    if consecutive:
        return [f"{i:05d}" for i in range(num_frames)]
    numbers = np.cumsum([0] + list(rng.choice(gaps, size=num_frames - 1)))
    return [f"{int(n):05d}" for n in numbers]


def _video_id(rng: np.random.Generator, used: set) -> str:
    while True:
        vid = "".join(rng.choice(list("0123456789abcdef"), size=10))
        if vid not in used:
            used.add(vid)
            return vid


def write_ref_youtube_vos(
    root: epath.PathLike,
    num_videos: int = 6,
    num_frames: int = 6,
    size: Tuple[int, int] = (96, 128),
    seed: int = 0,
    *,
    num_valid_videos: int = 2,
    num_test_videos: int = 1,
    max_objects: int = 3,
    style: Style = Style(),
) -> Dict[str, Any]:
    """Writes a Ref-YouTube-VOS tree with `num_videos` train videos of `size` (h, w); returns the manifest.

    Train frame names have irregular gaps (`style.frame_gaps`); some objects enter after the first frame.
    The valid meta lists valid + test videos, without obj_id, as the competition files do.
    """
    if min(len(style.colours), len(style.shapes)) < max_objects:
        raise ValueError(f"a video shows up to {max_objects} objects of distinct colours and shapes, but the style "
                         f"has {len(style.colours)} colours and {len(style.shapes)} shapes")
    root = epath.Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    used: set = set()
    manifest: Dict[str, Any] = {"root": str(root), "train": {}, "valid": {}, "test": {}}
    for split, count in (("train", num_videos), ("valid", num_valid_videos), ("test", num_test_videos)):
        for _ in range(count):
            vid = _video_id(rng, used)
            objects = _objects(rng, h, w, int(rng.integers(1, max_objects + 1)), num_frames, True, style)
            frames, labels = _render_video(rng, objects, num_frames, h, w)
            names = _frame_names(rng, num_frames, consecutive=False, gaps=style.frame_gaps)
            for t, name in enumerate(names):
                _save_jpeg(root / split / "JPEGImages" / vid / f"{name}.jpg", frames[t])
                if split == "train":
                    _save_palette_png(root / split / "Annotations" / vid / f"{name}.png", labels[t])
            expressions = {}
            for obj in objects:
                words = {**obj, "lane": _LANE_PHRASES[obj["lane"]]}
                for sentence in (template.format(**words) for template in style.sentences):
                    expressions[str(len(expressions))] = {"exp": sentence, "obj_id": str(obj["obj_id"])}
            manifest[split][vid] = {
                "frames": names,
                "expressions": expressions,
                "objects": {
                    str(o["obj_id"]): {
                        "category": o["shape"],
                        "colour": o["colour"],
                        "frames": [n for t, n in enumerate(names) if (labels[t] == o["obj_id"]).any()],
                    }
                    for o in objects
                },
            }

    def meta_expressions(split: str, with_obj_id: bool) -> Dict[str, Any]:
        return {
            vid: {
                "expressions": {
                    k: {"exp": e["exp"], "obj_id": e["obj_id"]} if with_obj_id else {"exp": e["exp"]}
                    for k, e in v["expressions"].items()
                },
                "frames": v["frames"],
            }
            for vid, v in manifest[split].items()
        }

    _write_json(
        root / "meta_expressions" / "train" / "meta_expressions.json", {"videos": meta_expressions("train", True)}
    )
    _write_json(
        root / "meta_expressions" / "valid" / "meta_expressions.json",
        {"videos": {**meta_expressions("valid", False), **meta_expressions("test", False)}},
    )
    _write_json(
        root / "meta_expressions" / "test" / "meta_expressions.json", {"videos": meta_expressions("test", False)}
    )
    _write_json(
        root / "train" / "meta.json",
        {
            "videos": {
                vid: {
                    "objects": {k: {"category": o["category"], "frames": o["frames"]} for k, o in v["objects"].items()}
                }
                for vid, v in manifest["train"].items()
            }
        },
    )
    return manifest


def _davis_sentences(obj) -> List[str]:
    """annot1 first-frame, annot1 full-video, annot2 first-frame, annot2 full-video."""
    return [
        f"the {obj['colour']} {obj['shape']} on the {obj['side']}",
        f"a {obj['colour']} {obj['shape']} moving to the {obj['direction']}",
        f"{obj['shape']} in {obj['colour']} at the {obj['side']}",
        f"the {obj['colour']} one going {obj['direction']}",
    ]


def write_ref_davis17(
    root: epath.PathLike,
    num_videos: int = 3,
    num_frames: int = 5,
    size: Tuple[int, int] = (96, 128),
    seed: int = 0,
    *,
    num_train_videos: int = 1,
    max_objects: int = 3,
) -> Dict[str, Any]:
    """Writes ReferFormer's Ref-DAVIS17 layout with `num_videos` valid videos; returns the manifest.

    Frames are consecutive (00000, 00001, ...); every object is in the first frame, as the DAVIS
    "unsupervised" evaluator takes the objects from it.
    """
    root = epath.Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    manifest: Dict[str, Any] = {"root": str(root), "train": {}, "valid": {}}
    for split, count in (("train", num_train_videos), ("valid", num_videos)):
        meta, meta_exp = {}, {}
        for i in range(count):
            vid = f"{split}-video-{i:02d}"
            objects = _objects(rng, h, w, int(rng.integers(1, max_objects + 1)), num_frames, late_start=False)
            frames, labels = _render_video(rng, objects, num_frames, h, w)
            names = _frame_names(rng, num_frames, consecutive=True)
            for t, name in enumerate(names):
                _save_jpeg(root / split / "JPEGImages" / vid / f"{name}.jpg", frames[t])
                _save_palette_png(root / split / "Annotations" / vid / f"{name}.png", labels[t])
                _save_jpeg(root / "DAVIS" / "JPEGImages" / "480p" / vid / f"{name}.jpg", frames[t])
                _save_palette_png(root / "DAVIS" / "Annotations_unsupervised" / "480p" / vid / f"{name}.png", labels[t])
            expressions = {}
            for obj in sorted(objects, key=lambda o: str(o["obj_id"])):
                for sentence in _davis_sentences(obj):
                    expressions[str(len(expressions))] = {"exp": sentence, "obj_id": str(obj["obj_id"])}
            meta[vid] = {"objects": {str(o["obj_id"]): {"category": o["shape"]} for o in objects}}
            meta_exp[vid] = {"expressions": expressions, "frames": names}
            manifest[split][vid] = {"frames": names, "expressions": expressions, "objects": meta[vid]["objects"]}
        if count:
            _write_json(root / split / "meta.json", {"videos": meta})
            _write_json(root / "meta_expressions" / split / "meta_expressions.json", {"videos": meta_exp})
        image_set = root / "DAVIS" / "ImageSets" / "2017" / ("val.txt" if split == "valid" else "train.txt")
        image_set.parent.mkdir(parents=True, exist_ok=True)
        image_set.write_text("".join(f"{vid}\n" for vid in manifest[split]))
    return manifest


REFCOCO_SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
_IMAGE_ID_BASE = {"refcoco": 100000, "refcoco+": 200000, "refcocog": 300000}
_CATEGORIES = [{"supercategory": "shape", "id": i + 1, "name": s} for i, s in enumerate(SHAPES)]


def _refcoco_sentences(obj, with_location: bool) -> List[str]:
    if with_location:
        return [
            f"the {obj['colour']} {obj['shape']} on the {obj['side']}",
            f"{obj['shape']} {_LANE_PHRASES[obj['lane']]}",
        ]
    return [f"the {obj['colour']} {obj['shape']}", f"a {obj['shape']} coloured {obj['colour']}"]


def write_refcoco(
    root: epath.PathLike,
    dataset: str = "refcoco",
    num_images: int = 8,
    size: Tuple[int, int] = (96, 128),
    seed: int = 0,
    *,
    splits: Optional[Sequence[str]] = None,
    segmentation: str = "polygon",
    max_objects: int = 3,
) -> Dict[str, Any]:
    """Writes ReferFormer's COCO-style files for `dataset` ('refcoco', 'refcoco+', 'refcocog').

    Images go to `root/train2014/COCO_train2014_<id>.jpg` (ids distinct per dataset, so the three
    can share one root), round-robin over `splits`. `segmentation`: 'polygon' (as the real files),
    'rle' (uncompressed counts) or 'compressed_rle'. RefCOCO+ sentences avoid location words.
    """
    if dataset not in REFCOCO_SPLITS:
        raise ValueError(f"dataset must be one of {sorted(REFCOCO_SPLITS)}, got {dataset!r}")
    if segmentation not in ("polygon", "rle", "compressed_rle"):
        raise ValueError(f"segmentation must be 'polygon', 'rle' or 'compressed_rle', got {segmentation!r}")
    splits = tuple(splits or REFCOCO_SPLITS[dataset])
    if num_images < len(splits):
        raise ValueError(f"need at least one image per split: {num_images} images for {len(splits)} splits")
    root = epath.Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    files = {
        s: {
            "info": {"description": f"synthetic {dataset}"},
            "licenses": [],
            "images": [],
            "annotations": [],
            "categories": _CATEGORIES,
        }
        for s in splits
    }
    manifest: Dict[str, Any] = {"root": str(root), "dataset": dataset, "splits": {s: {} for s in splits}}
    ann_id = _IMAGE_ID_BASE[dataset]
    for i in range(num_images):
        split = splits[i % len(splits)]
        image_id = _IMAGE_ID_BASE[dataset] + i
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        objects = _objects(rng, h, w, int(rng.integers(1, max_objects + 1)), 1, late_start=False)
        frames, labels = _render_video(rng, objects, 1, h, w)
        _save_jpeg(root / "train2014" / file_name, frames[0])
        entry = manifest["splits"][split][image_id] = {"file_name": file_name, "objects": {}, "sentences": {}}
        for obj in objects:
            ann_id += 1
            cx, cy = obj["centres"][0]
            polygon = shape_polygon(obj["shape"], cx, cy, obj["radius"])
            mask = labels[0] == obj["obj_id"]
            if segmentation == "polygon":
                seg: Any = [polygon]
            elif segmentation == "rle":
                seg = {"counts": coco_masks.rle_encode(mask), "size": [h, w]}
            else:
                seg = {"counts": coco_masks.counts_to_string(coco_masks.rle_encode(mask)), "size": [h, w]}
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            entry["objects"][ann_id] = {"colour": obj["colour"], "shape": obj["shape"]}
            for sentence in _refcoco_sentences(obj, with_location=dataset != "refcoco+"):
                sentence_id = len(files[split]["images"]) + 1
                files[split]["images"].append(
                    {
                        "file_name": file_name,
                        "height": h,
                        "width": w,
                        "original_id": image_id,
                        "id": sentence_id,
                        "caption": sentence,
                        "dataset_name": dataset,
                    }
                )
                files[split]["annotations"].append(
                    {
                        "segmentation": seg,
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                        "bbox": bbox,
                        "image_id": sentence_id,
                        "category_id": SHAPES.index(obj["shape"]) + 1,
                        "id": sentence_id,
                        "original_id": ann_id,
                    }
                )
                entry["sentences"][sentence_id] = {"sentence": sentence, "ann_id": ann_id}
    for split in splits:
        _write_json(root / dataset / f"instances_{dataset}_{split}.json", files[split])
    return manifest
