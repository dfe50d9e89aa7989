"""RefSAM pre-training on RefCOCO + RefCOCO+ + RefCOCOg as 3-frame pseudo-videos (REFSAM_SPEC.md §5.1).

Each image is repeated T=3 times; colour jitter and crop offsets are drawn per frame (the official code's
per-copy augmentation, the only "motion" a still image has), with the track token carried across the copies.
Its checkpoints initialise configs/refytvos.py (`--config.init.checkpoint_dir=<this workdir>/checkpoints`).
The learning rates are those of the Ref-YouTube-VOS recipe (spec §10: not stated for pre-training).

    python -m refsam_jax.data build --name refcoco/refcoco --manual_dir refcoco --data_dir tfds   (and + / g)
    python train.py --config configs/refcoco_pretrain.py --workdir runs/refcoco \\
        --config.model.sam.checkpoint=ckpt/sam_vit_h --config.model.text.encoder=ckpt/t5_3b \\
        --config.data.data_dir=tfds
"""

from refsam_jax.train import task


def get_config():
    config = task.refsam_config()
    config.model.sam.model_type = "vit_h"
    config.model.sam.checkpoint = ""
    config.model.text.encoder = ""
    config.model.text.width = 1024

    config.data.name = "refcoco/refcoco,refcoco/refcoco_plus,refcoco/refcocog"
    config.data.data_dir = ""
    config.data.image_size = 1024
    config.data.num_frames = 3
    config.data.batch_size = 8
    config.data.num_workers = 8
    config.data.augment.per_frame = True

    config.trainable = task.trainable_rules(config.model)
    groups = ("adapter", "lora", "mlp", "dense", "mask_decoder", "tracking")
    config.optim.lr.update({"adapter": 1e-4, "lora": 1e-4, "mlp": 1e-4, "dense": 1e-4, "mask_decoder": 1e-6,
                            "tracking": 1e-4})
    config.optim.weight_decay.update({group: 0.01 for group in groups})

    config.total_steps = 20_000
    config.log_every = 50
    config.checkpoint_every = 1000
    config.compute_dtype = "bfloat16"
    config.eval.at_end = False
    return config
