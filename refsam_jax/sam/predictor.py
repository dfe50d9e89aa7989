"""SamPredictor: segment_anything's interactive predictor (embed an image once, prompt it many times).

Same interface and outputs as `segment_anything.SamPredictor` (numpy in, numpy out, original-image pixel
coordinates); the model runs in two compiled functions, the image encoder and prompt encoder + mask decoder,
kept across calls so repeated prompts of the same shapes do not recompile; the upsampling to the image's
size is compiled once per padded size (`transforms.padded_size`), not once per image size.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax.sam import transforms
from refsam_jax.sam.model import Sam

MASK_THRESHOLD = 0.0


def _encode(graphdef: nnx.GraphDef, state: nnx.State, image: jax.Array) -> jax.Array:
    """Normalised, padded image `[1, S, S, 3]` -> image embedding `[1, g, g, C]`."""
    model = nnx.merge(graphdef, state)
    embedding, _ = model.image_encoder(image)
    return embedding


def _decode(graphdef, state, embedding, points, boxes, masks, multimask_output: bool):
    """Prompts (input-frame coordinates) -> low-res mask logits `[1, M, 4g, 4g]` and IoU `[1, M]`."""
    model = nnx.merge(graphdef, state)
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)


_encode_jit = jax.jit(_encode, static_argnums=0)
_decode_jit = jax.jit(_decode, static_argnums=(0, 6))


def _numeric_array(value, name: str, shapes: str, ndims: Tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim not in ndims or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array of shape {shapes}, got {array.dtype} {array.shape}")
    return array


class SamPredictor:
    """Computes a SAM image embedding once, then predicts masks for point / box / mask prompts.

    The model's weights are taken when the predictor is made; build a new predictor after changing them.
    """

    def __init__(self, model: Sam):
        self.model = model
        self.config = model.config
        self.transform = transforms.ResizeLongestSide(model.config.img_size)
        self._graphdef, self._state = nnx.split(model)
        self.reset_image()

    def reset_image(self) -> None:
        """Forgets the current image."""
        self.is_image_set = False
        self.features: Optional[jax.Array] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embeds `image`, uint8 `[H, W, 3]` in `image_format` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = transforms.check_image(image)
        if image_format == "BGR":
            image = image[..., ::-1]
        img_size = self.config.img_size
        resized = transforms.resize_longest_side(np.ascontiguousarray(image), img_size)
        padded = transforms.normalize_and_pad(jnp.asarray(resized, jnp.float32)[None], img_size)
        self.reset_image()
        self.features = _encode_jit(self._graphdef, self._state, padded)
        self.original_size = tuple(image.shape[:2])
        self.input_size = tuple(resized.shape[:2])
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image embedding in segment_anything's layout `[1, C, g, g]` (C=256, g=64 for SAM)."""
        self._require_image("an image embedding")
        return np.asarray(self.features).transpose(0, 3, 1, 2)

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image, as segment_anything's `SamPredictor.predict`.

        Args:
          point_coords: `[N, 2]` (x, y) points in original-image pixels.
          point_labels: `[N]` labels, 1 foreground, 0 background.
          box: `[4]` or `[1, 4]` box (x0, y0, x1, y1) in original-image pixels.
          mask_input: `[1, 4g, 4g]` low-res mask logits, e.g. a previous `low_res_logits[i:i+1]`.
          multimask_output: three masks (True) or one (False).
          return_logits: return mask logits instead of thresholded masks.
        Returns:
          masks `[C, H, W]` (bool, or float32 logits), iou_predictions `[C]`, low_res_logits `[C, 4g, 4g]`.
        """
        self._require_image("mask prediction")
        points = self._points(point_coords, point_labels)
        boxes = None
        if box is not None:
            box = _numeric_array(box, "box", "[4] or [1, 4]", (1, 2))
            if box.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must have shape [4] or [1, 4], got {box.shape}")
            boxes = jnp.asarray(transforms.apply_boxes(box, self.original_size, self.config.img_size),
                                jnp.float32)
        masks = None
        if mask_input is not None:
            side = self.config.mask_input_size
            mask_input = _numeric_array(mask_input, "mask_input", f"[1, {side}, {side}]", (3,))
            if mask_input.shape != (1, side, side):
                raise ValueError(f"mask_input must have shape [1, {side}, {side}], got {mask_input.shape}")
            masks = jnp.asarray(mask_input, jnp.float32)[..., None]
        low_res, iou = _decode_jit(self._graphdef, self._state, self.features, points, boxes, masks,
                                   bool(multimask_output))
        upsampled = transforms.postprocess_masks(low_res, self.input_size, self.original_size, self.config.img_size)
        masks_out = np.asarray(upsampled[0])
        if not return_logits:
            masks_out = masks_out > MASK_THRESHOLD
        return masks_out, np.asarray(iou[0]), np.asarray(low_res[0])

    def predict_batch(
        self,
        point_coords: Optional[jax.Array] = None,
        point_labels: Optional[jax.Array] = None,
        boxes: Optional[jax.Array] = None,
        mask_input: Optional[jax.Array] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[jax.Array, jax.Array, jax.Array]:
        """B prompts on the current image in one call: segment_anything's `predict_torch`, JAX arrays in and out.

        Coordinates are in the resized input frame: map original-image pixels with
        `self.transform.apply_coords` / `apply_boxes` first, as with `predict_torch`.

        Args:
          point_coords: `[B, N, 2]` (x, y); point_labels: `[B, N]` (1 foreground, 0 background).
          boxes: `[B, 4]` (x0, y0, x1, y1).
          mask_input: `[B, 1, 4g, 4g]` low-res mask logits (segment_anything's layout).
          multimask_output, return_logits: as in `predict`.
        Returns:
          masks `[B, C, H, W]` (bool, or logits), iou_predictions `[B, C]`, low_res_logits `[B, C, 4g, 4g]`.
        """
        self._require_image("mask prediction")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        points = None if point_coords is None else (jnp.asarray(point_coords, jnp.float32),
                                                     jnp.asarray(point_labels, jnp.int32))
        boxes = None if boxes is None else jnp.asarray(boxes, jnp.float32)
        masks = None if mask_input is None else jnp.asarray(mask_input, jnp.float32).transpose(0, 2, 3, 1)
        low_res, iou = _decode_jit(self._graphdef, self._state, self.features, points, boxes, masks,
                                   bool(multimask_output))
        upsampled = transforms.postprocess_masks(low_res, self.input_size, self.original_size, self.config.img_size)
        return (upsampled if return_logits else upsampled > MASK_THRESHOLD), iou, low_res

    def _points(self, point_coords, point_labels):
        """Validated points as (coords `[1, N, 2]` in the input frame, labels `[1, N]`), or None."""
        if point_coords is None:
            if point_labels is not None:
                raise ValueError("point_labels were given without point_coords")
            return None
        if point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied")
        coords = _numeric_array(point_coords, "point_coords", "[N, 2]", (2,))
        if coords.shape[1] != 2 or coords.shape[0] < 1:
            raise ValueError(f"point_coords must have shape [N, 2] with N >= 1, got {coords.shape}")
        labels = _numeric_array(point_labels, "point_labels", f"[{coords.shape[0]}]", (1,))
        if labels.shape != (coords.shape[0],):
            raise ValueError(f"point_labels must have shape [{coords.shape[0]}] (one label per point), "
                             f"got {labels.shape}")
        coords = transforms.apply_coords(coords, self.original_size, self.config.img_size)
        return jnp.asarray(coords, jnp.float32)[None], jnp.asarray(labels, jnp.int32)[None]

    def _require_image(self, what: str) -> None:
        if not self.is_image_set:
            raise RuntimeError(f"An image must be set with .set_image(...) before {what}.")
