"""Our SamPredictor against segment_anything's SamPredictor (PyTorch) on the same random tiny SAM."""

import numpy as np
import pytest

from refsam_jax.sam import predictor as predictor_lib
from refsam_jax.sam import tiny_config, transforms
from refsam_jax.sam.params import sam_from_state_dict
from refsam_jax.sam.predictor import SamPredictor
from refsam_jax.sam.torch_reference import import_segment_anything

segment_anything = import_segment_anything()

# Non-square: smaller than the 64 px model on both sides (both resizes upsample), and larger on both.
IMAGE_SIZES = [(40, 56), (150, 100)]
LOGIT_ATOL = 1e-4  # logits of this model are ~0.1; measured differences ~1e-7


@pytest.fixture(scope="module")
def predictors(make_torch_sam):
    """(ours, segment_anything's) predictors over the same random weights."""
    config = tiny_config()
    reference, state_dict = make_torch_sam(config)
    ours = SamPredictor(sam_from_state_dict(state_dict, config))
    return ours, segment_anything.SamPredictor(reference)


def _image(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _prompts(size, reference_low_res):
    """Prompt sets in original-image pixels: points, box, points + box, points + a previous low-res mask."""
    h, w = size
    points = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.8 * h]])
    labels = np.array([1, 0])
    box = np.array([0.1 * w, 0.2 * h, 0.8 * w, 0.9 * h])
    return [
        dict(point_coords=points, point_labels=labels, multimask_output=True),
        dict(box=box, multimask_output=False),
        dict(point_coords=points[:1], point_labels=labels[:1], box=box[None], multimask_output=True),
        dict(point_coords=points, point_labels=labels, mask_input=reference_low_res, multimask_output=False),
    ]


def _assert_masks_match(masks, reference_logits):
    """Thresholded masks agree except at pixels whose reference logit is within LOGIT_ATOL of the threshold."""
    assert masks.dtype == bool and masks.shape == reference_logits.shape
    flipped = masks != (reference_logits > 0.0)
    assert np.all(np.abs(reference_logits[flipped]) < LOGIT_ATOL), np.abs(reference_logits[flipped]).max()


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_predict_matches_segment_anything(predictors, size):
    ours, reference = predictors
    image = _image(size)
    ours.set_image(image)
    reference.set_image(image)
    assert ours.original_size == tuple(reference.original_size) == size
    assert ours.input_size == tuple(reference.input_size)
    embedding = ours.get_image_embedding()
    assert embedding.shape == (1, 32, 8, 8)  # segment_anything's [1, C, g, g]
    np.testing.assert_allclose(np.asarray(embedding), reference.get_image_embedding().numpy(), atol=1e-4)

    first = reference.predict(point_coords=np.array([[5.0, 7.0]]), point_labels=np.array([1]))[2][:1]
    for prompt in _prompts(size, first):
        ref_logits, ref_iou, ref_low_res = reference.predict(**prompt, return_logits=True)
        ref_masks, _, _ = reference.predict(**prompt)
        logits, iou, low_res = ours.predict(**prompt, return_logits=True)
        masks, iou_again, low_res_again = ours.predict(**prompt)
        n_masks = 3 if prompt["multimask_output"] else 1
        assert logits.shape == (n_masks, *size) and logits.dtype == np.float32
        assert iou.shape == (n_masks,) and low_res.shape == (n_masks, 32, 32)
        np.testing.assert_allclose(logits, ref_logits, atol=LOGIT_ATOL)
        np.testing.assert_allclose(iou, ref_iou, atol=1e-4)
        np.testing.assert_allclose(low_res, ref_low_res, atol=LOGIT_ATOL)
        _assert_masks_match(masks, ref_logits)
        assert (ref_masks == (ref_logits > 0.0)).all()
        np.testing.assert_array_equal(iou_again, iou)
        np.testing.assert_array_equal(low_res_again, low_res)


def test_bgr_input_and_no_recompilation(predictors):
    ours, _ = predictors
    image = _image(IMAGE_SIZES[0], seed=1)
    ours.set_image(image)
    prompt = dict(point_coords=np.array([[10.0, 12.0]]), point_labels=np.array([1]))
    embedding = ours.get_image_embedding()
    masks, iou, _ = ours.predict(**prompt)
    encodes, decodes = predictor_lib._encode_jit._cache_size(), predictor_lib._decode_jit._cache_size()
    # The same image given as BGR, other values of the same shapes: same results, nothing recompiled.
    ours.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(ours.get_image_embedding(), embedding)
    masks_bgr, iou_bgr, _ = ours.predict(**prompt)
    np.testing.assert_array_equal(masks_bgr, masks)
    np.testing.assert_array_equal(iou_bgr, iou)
    ours.set_image(_image(IMAGE_SIZES[0], seed=2))
    ours.predict(point_coords=np.array([[30.0, 2.0]]), point_labels=np.array([0]))
    assert predictor_lib._encode_jit._cache_size() == encodes
    assert predictor_lib._decode_jit._cache_size() == decodes


def test_other_image_sizes_compile_no_new_program(predictors):
    """Images are padded to the model size and masks upsampled per padded size (`transforms.padded_size`)."""
    ours, _ = predictors
    prompt = dict(point_coords=np.array([[10.0, 12.0]]), point_labels=np.array([1]))
    ours.set_image(_image((100, 140), seed=3))
    masks, _, _ = ours.predict(**prompt)
    assert masks.shape == (3, 100, 140)
    compiled = (predictor_lib._encode_jit._cache_size(), predictor_lib._decode_jit._cache_size(),
                transforms.apply_postprocess._cache_size())
    for size in ((97, 129), (128, 190), (110, 150)):  # Padded to 128 x 192, as 100 x 140 is.
        ours.set_image(_image(size, seed=4))
        masks, _, _ = ours.predict(**prompt)
        assert masks.shape == (3, *size)
    assert (predictor_lib._encode_jit._cache_size(), predictor_lib._decode_jit._cache_size(),
            transforms.apply_postprocess._cache_size()) == compiled


def test_bad_images(predictors):
    ours, _ = predictors
    for image, message in [
        (np.zeros((20, 30, 3), np.float32), "must be uint8"),
        (np.zeros((20, 30), np.uint8), r"must have shape \[H, W, 3\]"),
        (np.zeros((20, 30, 4), np.uint8), r"must have shape \[H, W, 3\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            ours.set_image(image)
    with pytest.raises(ValueError, match="image_format"):
        ours.set_image(_image((20, 30)), image_format="RGBA")


def test_bad_prompts(predictors):
    ours, _ = predictors
    ours.set_image(_image((20, 30)))
    points, labels = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 0])
    for prompt, message in [
        (dict(point_coords=points), "point_labels must be supplied"),
        (dict(point_labels=labels), "point_labels were given without point_coords"),
        (dict(point_coords=points[0], point_labels=labels), r"point_coords must be .*\[N, 2\]"),
        (dict(point_coords=np.zeros((2, 3)), point_labels=labels), r"point_coords must have shape \[N, 2\]"),
        (dict(point_coords=points, point_labels=labels[:1]), r"point_labels must have shape \[2\]"),
        (dict(box=np.zeros((2, 4))), r"box must have shape \[4\] or \[1, 4\]"),
        (dict(box=np.zeros(3)), r"box must have shape \[4\] or \[1, 4\]"),
        (dict(mask_input=np.zeros((32, 32))), r"mask_input must be .*\[1, 32, 32\]"),
        (dict(mask_input=np.zeros((1, 256, 256))), r"mask_input must have shape \[1, 32, 32\]"),
        (dict(box=np.array(["a", "b", "c", "d"])), "box must be a numeric array"),
    ]:
        with pytest.raises(ValueError, match=message):
            ours.predict(**prompt)


def test_requires_an_image(predictors):
    ours, _ = predictors
    ours.set_image(_image((20, 30)))
    ours.reset_image()
    assert not ours.is_image_set and ours.original_size is None
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        ours.get_image_embedding()


def test_batched_prompts_match_segment_anything_predict_torch(predictors):
    """B boxes (and B point sets) in one call, mapped with `.transform` as segment_anything users do."""
    import torch

    ours, reference = predictors
    size = IMAGE_SIZES[1]
    image = _image(size, seed=3)
    ours.set_image(image)
    reference.set_image(image)
    h, w = size
    boxes = np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.7 * h], [0.3 * w, 0.1 * h, 0.9 * w, 0.5 * h],
                      [0.0, 0.0, w - 1.0, h - 1.0]])
    points = np.array([[[0.3 * w, 0.4 * h]], [[0.6 * w, 0.2 * h]], [[0.5 * w, 0.5 * h]]])
    labels = np.ones((3, 1), np.int64)
    our_boxes = ours.transform.apply_boxes(boxes, size)
    ref_boxes = reference.transform.apply_boxes(boxes, size)
    np.testing.assert_allclose(our_boxes, ref_boxes, rtol=1e-6)
    our_points = ours.transform.apply_coords(points, size)
    for kwargs, multimask in (({"boxes": our_boxes}, False), ({"point_coords": our_points, "point_labels": labels,
                                                               "boxes": our_boxes}, True)):
        ref_kwargs = {"boxes": torch.as_tensor(np.asarray(kwargs["boxes"])).float(),
                      "point_coords": None, "point_labels": None}
        if "point_coords" in kwargs:
            ref_kwargs.update(point_coords=torch.as_tensor(np.asarray(kwargs["point_coords"])).float(),
                              point_labels=torch.as_tensor(kwargs["point_labels"]))
        with torch.no_grad():
            ref_logits, ref_iou, ref_low_res = reference.predict_torch(**ref_kwargs, multimask_output=multimask,
                                                                       return_logits=True)
        logits, iou, low_res = ours.predict_batch(**kwargs, multimask_output=multimask, return_logits=True)
        masks, _, _ = ours.predict_batch(**kwargs, multimask_output=multimask)
        assert logits.shape == tuple(ref_logits.shape) == (3, 3 if multimask else 1, h, w)
        np.testing.assert_allclose(np.asarray(low_res), ref_low_res.numpy(), atol=LOGIT_ATOL)
        np.testing.assert_allclose(np.asarray(iou), ref_iou.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(logits), ref_logits.numpy(), atol=LOGIT_ATOL)
        _assert_masks_match(np.asarray(masks), ref_logits.numpy())
