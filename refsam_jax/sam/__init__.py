"""Segment Anything (SAM) in Flax NNX, numerically equal to `segment_anything` 1.0."""

from refsam_jax.sam.build import SamCheckpointError, build_sam, load_sam, sam_model_registry, save_sam
from refsam_jax.sam.config import SAM_CONFIGS, SamConfig, tiny_config
from refsam_jax.sam.model import Sam
from refsam_jax.sam.predictor import SamPredictor

__all__ = ["SAM_CONFIGS", "Sam", "SamCheckpointError", "SamConfig", "SamPredictor", "build_sam", "load_sam",
           "sam_model_registry", "save_sam", "tiny_config"]
