"""The Segment Anything model: image encoder, prompt encoder and mask decoder."""

import jax.numpy as jnp
from flax import nnx

from refsam_jax.sam.config import SamConfig
from refsam_jax.sam.image_encoder import ImageEncoderViT
from refsam_jax.sam.mask_decoder import MaskDecoder
from refsam_jax.sam.prompt_encoder import PromptEncoder


class Sam(nnx.Module):
    """SAM's three parts; pre/post-processing lives in `transforms` and the predictor.

    `dtype` is the compute dtype of the image encoder's matmuls (bfloat16 for speed); parameters are float32.
    """

    def __init__(self, config: SamConfig, rngs: nnx.Rngs, *, dtype=jnp.float32):
        self.config = config
        self.image_encoder = ImageEncoderViT(config, rngs, dtype=dtype)
        self.prompt_encoder = PromptEncoder(config, rngs)
        self.mask_decoder = MaskDecoder(config, rngs)
