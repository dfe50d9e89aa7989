"""Stage 1 of the demo (demo.py): a small SAM (96 px, random initialisation) trained in a couple of minutes on 2 CPU
cores on the object masks of the training videos of the synthetic Ref-YouTube-VOS the RefSAM demo writes
(configs/demo.py), class-agnostically, as SA-1B trained the real SAM.

    python train.py --config configs/sam_demo.py --workdir sam_demo_run

The trained SAM is written to `<workdir>/sam`, a converted SAM that RefSAM loads as its frozen SAM
(`--config.model.sam.checkpoint=sam_demo_run/sam` with configs/demo.py). The held-out mIoU from one centre click
is evaluated before and after training (eval/mIoU_1pt in metrics.jsonl). Everything trains from scratch, so the
learning rates are large, and the prompts are mostly points, which a random SAM learns first.
"""

from refsam_jax import sam_task

# The synthetic data of both demo stages (configs/demo.py uses it too): the same videos, the same held-out split.
SYNTHETIC = {"enabled": True, "num_videos": 100, "num_frames": 8}


def get_config():
    config = sam_task.sam_task_config()
    config.model.sam.model_type = "small"  # `sam.config.small_config`
    config.synthetic.update(SYNTHETIC)
    config.data.image_size = 96
    config.data.batch_size = 8
    config.data.max_masks = 3  # a synthetic frame shows 1-3 shapes
    config.data.num_workers = 0

    config.prompts.box_fraction = 0.1
    config.prompts.refine_iters = 1
    config.optim.lr.update(dict.fromkeys(sam_task.GROUPS, 2e-3))
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 50
    config.optim.end_lr_factor = 0.1
    config.optim.clip_grad_norm = 1.0

    config.total_steps = 500
    config.log_every = 50
    config.checkpoint_every = 250
    config.compute_dtype = "float32"
    config.eval.at_start = True
    return config
