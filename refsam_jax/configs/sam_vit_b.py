"""SAM ViT-B fine-tuned on the object masks of Ref-YouTube-VOS (every object of the training frames, no sentences),
from the official weights:

    python -m convert sam --checkpoint sam_vit_b_01ec64.pth --model-type vit_b --output ckpt/sam_vit_b
    python -m refsam_jax.data build --name ref_youtube_vos --manual_dir ref-youtube-vos --data_dir tfds
    python train.py --config configs/sam_vit_b.py --workdir runs/sam_vit_b \\
        --config.model.sam.checkpoint=ckpt/sam_vit_b --config.data.data_dir=tfds

`<workdir>/sam` is then a converted SAM for RefSAM (`--config.model.sam.checkpoint=runs/sam_vit_b/sam`, with
`--config.model.sam.model_type=vit_b`). SAM's recipe (AdamW, weight decay 0.1, 250 warm-up steps, up to 64 masks
an image, points or noisy boxes, iterative clicks) at fine-tuning learning rates: 1e-5 for the pre-trained
encoders, 1e-4 for the mask decoder.
"""

from refsam_jax import sam_task

LEARNING_RATES = {"image_encoder": 1e-5, "prompt_encoder": 1e-5, "mask_decoder": 1e-4}


def get_config():
    config = sam_task.sam_task_config()
    config.model.sam.model_type = "vit_b"
    config.model.sam.checkpoint = ""  # a converted SAM ViT-B (`python -m convert sam`)
    config.data.name = "ref_youtube_vos"
    config.data.data_dir = ""  # the built Ref-YouTube-VOS (`python -m refsam_jax.data build`)
    config.data.image_size = 1024
    config.data.batch_size = 8
    config.data.max_masks = 16
    config.data.num_workers = 8

    config.prompts.refine_iters = 2
    config.optim.lr.update(LEARNING_RATES)
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 250
    config.optim.end_lr_factor = 0.1
    config.optim.clip_grad_norm = 1.0

    config.total_steps = 20_000
    config.log_every = 50
    config.checkpoint_every = 1000
    config.compute_dtype = "bfloat16"
    config.eval.split = "heldout"
    config.eval.max_frames = 500
    return config
