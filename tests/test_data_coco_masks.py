"""COCO polygon/RLE decoding against values produced by pycocotools 2.0.11 (frPyObjects + merge)."""

import numpy as np
import pytest

from refsam_jax.data import coco_masks

# (segmentation, h, w, compressed RLE string and area from pycocotools.mask.merge(frPyObjects(...)))
PYCOCOTOOLS_CASES = [
    (
        [[10.3, 4.7, 30.2, 8.1, 25.5, 27.9, 6.2, 20.4]],
        32,
        40,
        "c61k05L3L5L30001O0010O0001O0010O0001O001O01K4L4K5Ll9",
        371,
    ),
    (
        [[0, 0, 15.5, 0, 15.5, 9.5, 0, 9.5], [20.25, 3.75, 28.8, 12.1, 18.6, 14.4]],
        16,
        30,
        "0:600000000000000000000000000000h1LXN41O1O1N2O1O1O1Nf0",
        212,
    ),
    (
        [[-2.0, 5.0, 12.6, -1.4, 25.0, 18.7, 3.3, 22.2, 1.1, 11.9]],
        20,
        24,
        "46>3L6K2M100O1000T31kL1O2N2N1O2N1N3N2N1O@",
        346,
    ),
]


@pytest.mark.parametrize("segmentation, h, w, expected, area", PYCOCOTOOLS_CASES)
def test_polygons_rasterise_like_pycocotools(segmentation, h, w, expected, area):
    mask = coco_masks.segmentation_to_mask(segmentation, h, w)
    reference = coco_masks.rle_decode(coco_masks.rle_string_to_counts(expected), h, w)
    np.testing.assert_array_equal(mask, reference)
    assert mask.sum() == area
    assert coco_masks.counts_to_string(coco_masks.rle_encode(mask)) == expected


def test_rle_forms_agree():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    mask[0, 0] = True  # RLE starts with a 0-length background run
    counts = coco_masks.rle_encode(mask)
    assert counts[0] == 0
    np.testing.assert_array_equal(coco_masks.segmentation_to_mask({"counts": counts, "size": [13, 17]}, 13, 17), mask)
    compressed = {"counts": coco_masks.counts_to_string(counts), "size": [13, 17]}
    np.testing.assert_array_equal(coco_masks.segmentation_to_mask(compressed, 13, 17), mask)


def test_bad_segmentations_raise():
    with pytest.raises(ValueError, match="coordinates"):
        coco_masks.segmentation_to_mask([[1, 2, 3, 4]], 8, 8)
    with pytest.raises(ValueError, match="sum"):
        coco_masks.segmentation_to_mask({"counts": [3, 4], "size": [8, 8]}, 8, 8)
    with pytest.raises(ValueError, match="size"):
        coco_masks.segmentation_to_mask({"counts": [64], "size": [4, 16]}, 8, 8)
    with pytest.raises(ValueError, match="unknown segmentation"):
        coco_masks.segmentation_to_mask("polygon", 8, 8)
