"""RefSAM on top of SAM: adapters/LoRA, Cross-Modal MLP, (Hierarchical) Dense Attention, Implicit Tracking Module.

Import the parts from their modules (`refsam_jax.model.refsam.build_refsam`, `...config.default_model_config`,
`...groups.TRAINABLE_GROUPS`); this package imports nothing itself, because `refsam_jax.sam.image_encoder`
imports `refsam_jax.model.adapters` and an eager import here would be circular.
"""
