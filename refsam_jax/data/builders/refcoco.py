"""RefCOCO / RefCOCO+ / RefCOCOg from ReferFormer's COCO-style files, as a TFDS builder.

ReferFormer's `convert_refexp_to_coco.py` writes `<dataset>/instances_<dataset>_<split>.json` in which
every sentence is one "image" entry (`file_name`, `height`, `width`, `original_id` = COCO image id,
`id` = sentence id, `caption`) with exactly one annotation (`image_id` = that sentence id,
`segmentation` as polygons or RLE, `bbox`, `category_id`, `original_id` = COCO annotation id).
Images are `train2014/<file_name>`. Configs: refcoco (unc), refcoco_plus (unc), refcocog (umd);
splits: whatever `instances_<dataset>_*.json` files exist (train/val/testA/testB, or train/val/test).

One record per COCO image (sentences of one image share its bytes):
  image_id    int64, COCO image id;  file_name str;  height, width int32
  image       bytes, the JPEG file as stored on disk
  objects     [O] {ann_id int64, category_id int32, bbox float32 [4] (x, y, w, h), mask bytes:
              PNG of the 0/1 mask rasterised as pycocotools does}
  sentences   [N] {sentence_id int64, sentence str, object_index int32 (into objects)}
"""

import dataclasses
import io
import re
from typing import Any, Dict, List

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from refsam_jax.data import coco_masks
from refsam_jax.data.builders import common

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Give the folder ReferFormer calls data/coco:
  train2014/COCO_train2014_<12 digits>.jpg
  refcoco/instances_refcoco_{train,val,testA,testB}.json      (convert_refexp_to_coco.py output)
  refcoco+/instances_refcoco+_{train,val,testA,testB}.json
  refcocog/instances_refcocog_{train,val,test}.json
"""


@dataclasses.dataclass
class RefcocoConfig(tfds.core.BuilderConfig):
    """`dataset_dir`: the folder and file-name stem ('refcoco', 'refcoco+', 'refcocog')."""

    dataset_dir: str = "refcoco"


def encode_mask_png(mask: np.ndarray) -> bytes:
    """bool `[H, W]` -> PNG bytes of a 0/1 `L` image."""
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


class Refcoco(common.SkipReportMixin, tfds.core.GeneratorBasedBuilder):
    """RefCOCO family: one array_record record per image, its objects and sentences nested."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One record per image: JPEG bytes, PNG masks per object, sentences."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        RefcocoConfig(name="refcoco", dataset_dir="refcoco", description="RefCOCO, unc split"),
        RefcocoConfig(name="refcoco_plus", dataset_dir="refcoco+", description="RefCOCO+, unc split"),
        RefcocoConfig(name="refcocog", dataset_dir="refcocog", description="RefCOCOg, umd split"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="RefCOCO/RefCOCO+/RefCOCOg referring image segmentation, from ReferFormer's COCO-style files.",
            features=tfds.features.FeaturesDict(
                {
                    "image_id": np.int64,
                    "file_name": tfds.features.Text(),
                    "height": np.int32,
                    "width": np.int32,
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "objects": tfds.features.Sequence(
                        {
                            "ann_id": np.int64,
                            "category_id": np.int32,
                            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "mask": tfds.features.Tensor(shape=(), dtype=np.object_),
                        }
                    ),
                    "sentences": tfds.features.Sequence(
                        {
                            "sentence_id": np.int64,
                            "sentence": tfds.features.Text(),
                            "object_index": np.int32,
                        }
                    ),
                }
            ),
            homepage="https://github.com/lichengunc/refer",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = epath.Path(dl_manager.manual_dir)
        name = self.builder_config.dataset_dir
        ann_dir = common.require_dir(root / name, f"{name} annotation files")
        image_dir = common.require_dir(root / "train2014", "COCO train2014 images")
        pattern = re.compile(rf"^instances_{re.escape(name)}_(\w+)\.json$")
        splits = {}
        for path in sorted(ann_dir.iterdir()):
            match = pattern.match(path.name)
            if match:
                splits[match.group(1)] = self._generate_examples(path, image_dir)
        if not splits:
            raise common.DataError("missing_file", f"{ann_dir}: no instances_{name}_<split>.json file")
        return splits

    def _group_by_image(self, path: epath.Path) -> Dict[int, Dict[str, Any]]:
        """Sentence entries of the json -> {COCO image id: {file_name, height, width, sentences}}."""
        data = common.read_json(path)
        entries = common.expect_key(data, "images", path, "top level")
        annotations = common.expect_key(data, "annotations", path, "top level")
        ann_by_sentence = {}
        for i, ann in enumerate(annotations):
            ann_by_sentence[common.expect_key(ann, "image_id", path, f"annotations[{i}]")] = ann
        images: Dict[int, Dict[str, Any]] = {}
        for i, entry in enumerate(entries):
            where = f"images[{i}]"
            sentence_id = common.expect_key(entry, "id", path, where)
            image_id = int(entry.get("original_id", sentence_id))
            image = images.setdefault(
                image_id,
                {
                    "file_name": common.expect_key(entry, "file_name", path, where),
                    "height": int(common.expect_key(entry, "height", path, where)),
                    "width": int(common.expect_key(entry, "width", path, where)),
                    "sentences": [],
                },
            )
            if sentence_id not in ann_by_sentence:
                raise common.DataError(
                    "bad_annotation", f"{path}: {where} (sentence id {sentence_id}) has no annotation"
                )
            image["sentences"].append(
                (int(sentence_id), common.expect_key(entry, "caption", path, where), ann_by_sentence[sentence_id])
            )
        return images

    def _generate_examples(self, path: epath.Path, image_dir: epath.Path):
        images = self._group_by_image(path)
        for image_id in sorted(images):
            image = images[image_id]
            try:
                example = self._image_example(path, image_dir, image_id, image)
            except common.DataError as e:
                self.policy.handle(e, "image")
                continue
            if example is not None:
                yield image_id, example

    def _image_example(self, path, image_dir, image_id, image):
        image_path = image_dir / image["file_name"]
        data, size = common.read_image_bytes(image_path, f" (image {image_id}, listed in {path})")
        if size != (image["height"], image["width"]):
            raise common.DataError(
                "corrupt_image", f"{image_path}: size {size} differs from {(image['height'], image['width'])} in {path}"
            )
        objects: List[Dict[str, Any]] = []
        index_by_ann: Dict[int, int] = {}
        empty = set()
        sentences = []
        for sentence_id, caption, ann in sorted(image["sentences"], key=lambda s: s[0]):
            ann_id = int(ann.get("original_id", ann.get("id", sentence_id)))
            if ann_id not in index_by_ann and ann_id not in empty:
                try:
                    mask = coco_masks.segmentation_to_mask(ann.get("segmentation"), *size)
                except ValueError as e:
                    raise common.DataError(
                        "bad_annotation", f"{path}: annotation {ann_id} of image {image_id}: {e}"
                    ) from e
                if mask.any():
                    index_by_ann[ann_id] = len(objects)
                    objects.append(
                        {
                            "ann_id": ann_id,
                            "category_id": int(ann.get("category_id", 0)),
                            "bbox": np.asarray(ann.get("bbox", [0, 0, 0, 0]), dtype=np.float32),
                            "mask": encode_mask_png(mask),
                        }
                    )
                else:
                    empty.add(ann_id)
            if ann_id in empty:
                self.policy.handle(
                    common.DataError(
                        "object_never_appears",
                        f"{path}: sentence {sentence_id} ({caption!r}) of image {image_id}: annotation {ann_id} has an empty mask",
                    ),
                    "sentence",
                )
                continue
            sentences.append({"sentence_id": sentence_id, "sentence": caption, "object_index": index_by_ann[ann_id]})
        if not sentences:
            self.policy.handle(
                common.DataError("object_never_appears", f"{path}: image {image_id}: no sentence left"), "image"
            )
            return None
        return {
            "image_id": image_id,
            "file_name": image["file_name"],
            "height": size[0],
            "width": size[1],
            "image": data,
            "objects": objects,
            "sentences": sentences,
        }
