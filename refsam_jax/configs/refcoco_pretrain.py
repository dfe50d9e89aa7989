"""RefSAM pre-training on RefCOCO + RefCOCO+ + RefCOCOg as 3-frame pseudo-videos (REFSAM_SPEC.md §5.1).

The Ref-YouTube-VOS recipe (refytvos.py, whose learning rates spec §10 says pre-training shares) on images:
each image is repeated T=3 times; colour jitter and crop offsets are drawn per frame (the official code's
per-copy augmentation, the only "motion" a still image has), with the track token carried across the copies.
Its checkpoints initialise configs/refytvos.py (`--config.init.checkpoint_dir=<this workdir>/checkpoints`).

    python -m refsam_jax.data build --name refcoco/refcoco --manual_dir refcoco --data_dir tfds   (and + / g)
    python train.py --config configs/refcoco_pretrain.py --workdir runs/refcoco \\
        --config.model.sam.checkpoint=ckpt/sam_vit_h --config.model.text.encoder=ckpt/t5_3b \\
        --config.data.data_dir=tfds
"""

from refsam_jax.configs import refytvos


def get_config():
    config = refytvos.get_config()
    config.data.name = "refcoco/refcoco,refcoco/refcoco_plus,refcoco/refcocog"
    config.data.augment.per_frame = True
    config.total_steps = 20_000
    config.eval.split = ""  # no held-out videos in RefCOCO
    config.eval.max_expressions = 0
    config.eval.at_end = False
    return config
