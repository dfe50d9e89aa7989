"""`refsam_jax.sam.transforms` against segment_anything's ResizeLongestSide and Sam.preprocess/postprocess."""

import jax
import numpy as np
import pytest
import torch

from refsam_jax.sam import transforms
from refsam_jax.sam.torch_reference import import_segment_anything

segment_anything = import_segment_anything()
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,  # noqa: E402
)
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

# (H, W) of the original images: non-square both ways, odd sizes, smaller and larger than the model.
IMAGE_SIZES = [(50, 80), (80, 50), (37, 91), (300, 200), (64, 64), (1, 7)]


def _torch_sam(img_size: int) -> Sam:
    """A minimal segment_anything Sam: only img_size and the pixel statistics matter here."""
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=16, depth=1, num_heads=1,
                                      out_chans=16),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(
            depth=1, embedding_dim=16, num_heads=1, mlp_dim=16)),
    ).eval()


def _image(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("long_side", [64, 1024])
def test_get_preprocess_shape_matches(long_side):
    for h in range(1, 120, 7):
        for w in range(1, 120, 5):
            expected = ResizeLongestSide.get_preprocess_shape(h, w, long_side)
            assert transforms.get_preprocess_shape(h, w, long_side) == expected, (h, w)


@pytest.mark.parametrize("long_side", [64, 1024])
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_resize_longest_side_is_exact(size, long_side):
    image = _image(size)
    expected = ResizeLongestSide(long_side).apply_image(image)
    got = transforms.resize_longest_side(image, long_side)
    assert got.dtype == np.uint8
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_apply_coords_and_boxes_match(size):
    rng = np.random.default_rng(1)
    reference = ResizeLongestSide(64)
    coords = rng.uniform(0, max(size), size=(5, 2))
    boxes = rng.uniform(0, max(size), size=(3, 4))
    np.testing.assert_array_equal(transforms.apply_coords(coords, size, 64),
                                  reference.apply_coords(coords, size))
    np.testing.assert_array_equal(transforms.apply_boxes(boxes, size, 64), reference.apply_boxes(boxes, size))
    # Integer input and a single [4] box, as users pass them.
    box = np.array([3, 4, 20, 30])
    np.testing.assert_array_equal(transforms.apply_boxes(box, size, 64), reference.apply_boxes(box, size))
    np.testing.assert_array_equal(transforms.apply_coords(coords.astype(int), size, 64),
                                  reference.apply_coords(coords.astype(int), size))


@pytest.mark.parametrize("img_size,size", [(64, (50, 80)), (64, (80, 50)), (64, (64, 64)), (1024, (300, 200))])
def test_normalize_and_pad_matches_preprocess(img_size, size):
    sam = _torch_sam(img_size)
    image = transforms.resize_longest_side(_image(size), img_size)
    expected = sam.preprocess(torch.tensor(image).permute(2, 0, 1)[None].float())
    got = transforms.normalize_and_pad(image[None].astype(np.float32), img_size)
    assert got.shape == (1, img_size, img_size, 3)
    np.testing.assert_allclose(np.asarray(got), expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_normalize_and_pad_rejects_too_large():
    with pytest.raises(ValueError, match="larger than the model input"):
        transforms.normalize_and_pad(np.zeros((65, 10, 3), np.float32), 64)


@pytest.mark.parametrize(
    "img_size,original_size",
    [
        (64, (50, 80)),    # upsampling to a non-square original
        (64, (80, 50)),
        (64, (30, 47)),    # original smaller than the model input: the last resize downsamples
        (64, (13, 9)),
        (64, (200, 120)),  # original larger than the model input
        (1024, (480, 720)),  # real SAM sizes, downsampling from the 683 x 1024 crop
    ],
)
def test_postprocess_masks_matches(img_size, original_size):
    sam = _torch_sam(img_size)
    input_size = transforms.get_preprocess_shape(*original_size, img_size)
    low_res = img_size // 4
    masks = np.random.default_rng(2).normal(scale=5.0, size=(2, 3, low_res, low_res)).astype(np.float32)
    expected = sam.postprocess_masks(torch.from_numpy(masks), input_size, original_size).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(transforms.postprocess_masks(masks, input_size, original_size, img_size))
    assert got.shape == expected.shape == (2, 3, *original_size)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((8, 8, 3), np.float32), "must be uint8"),
        (np.zeros((8, 8), np.uint8), r"must have shape \[H, W, 3\]"),
        (np.zeros((8, 8, 4), np.uint8), r"must have shape \[H, W, 3\]"),
        (np.zeros((3, 8, 8), np.uint8), r"must have shape \[H, W, 3\]"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_check_image_errors(image, message):
    with pytest.raises(ValueError, match=message):
        transforms.check_image(image)
