"""RefSAM on Ref-YouTube-VOS, the paper's recipe (REFSAM_SPEC.md §4-5); the other configs start from it.

AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 as PyTorch's default), constant learning rates per
module from the paper's Fig. 6 (MLP 1e-4, Dense Attention 1e-4, mask decoder 1e-6; adapters and the tracking
module 1e-4 as the code defaults), 3-frame clips with back-propagation through the track token, Dice + focal.
ViT-H SAM and a frozen T5-3B, as in the headline results (spec §0.15).

    python -m convert sam --checkpoint sam_vit_h_4b8939.pth --model-type vit_h --output ckpt/sam_vit_h
    python -m convert text --hf path/to/t5-3b --output ckpt/t5_3b
    python -m refsam_jax.data build --name ref_youtube_vos --manual_dir ref-youtube-vos --data_dir tfds
    python train.py --config configs/refytvos.py --workdir runs/refytvos \\
        --config.model.sam.checkpoint=ckpt/sam_vit_h --config.model.text.encoder=ckpt/t5_3b \\
        --config.data.data_dir=tfds --config.init.checkpoint_dir=runs/refcoco/checkpoints

The epoch count and the number of GPUs of the paper are unknown (spec §4.4): 40k steps of 8 clips draw
320k clips, about one pass over the (expression, frame) pairs the official code enumerates.
"""

from refsam_jax import task
from refsam_jax.model import groups

LEARNING_RATES = {"adapter": 1e-4, "lora": 1e-4, "mlp": 1e-4, "dense": 1e-4, "mask_decoder": 1e-6, "tracking": 1e-4}


def get_config(variant: str = ""):
    """The recipe; `variant` "faithful" (`--config configs/refytvos.py:faithful`) turns every switchable
    deviation from the official code back to the official behaviour (docs/deviations.md)."""
    if variant not in ("", "faithful"):
        raise ValueError(f"configs/refytvos.py: unknown variant {variant!r} (known: '', 'faithful')")
    config = task.refsam_config()
    config.model.sam.model_type = "vit_h"
    config.model.sam.checkpoint = ""  # converted SAM ViT-H (`python -m convert sam`)
    config.model.text.encoder = ""  # t5-3b: a Hugging Face folder or `python -m convert text` output
    config.model.text.width = 1024

    config.data.name = "ref_youtube_vos"
    config.data.data_dir = ""
    config.data.image_size = 1024
    config.data.num_frames = 3
    config.data.batch_size = 8
    config.data.num_workers = 8

    config.optim.lr.update(LEARNING_RATES)
    config.optim.weight_decay.update({group: 0.01 for group in LEARNING_RATES})
    config.optim.schedule = "constant"

    config.total_steps = 40_000
    config.log_every = 50
    config.checkpoint_every = 1000
    config.compute_dtype = "bfloat16"
    config.sharding.fsdp_min_size = 2**20
    config.eval.split = "heldout"
    config.eval.max_expressions = 200
    if variant == "faithful":
        faithful(config)
    return config


def faithful(config):
    """The official code's behaviour where ours deviates and a switch exists (docs/deviations.md), in place."""
    config.model.text_attention_mask = False  # padded tokens pooled, attended to and used as prompts ...
    config.model.text.padding = "longest"  # ... up to the longest sentence of a device's batch (none alone)
    config.model.adapter.zero_init = False  # adapters start random ...
    config.frozen_on_purpose = r"\.(Space_Adapter|MLP_Adapter)\."  # ... and are never trained
    config.trainable = tuple(rule for rule in groups.trainable_rules(config.model) if rule[1] != "adapter")
    config.data.augment.per_frame = True  # colour jitter and crop offsets drawn per frame
    config.eval.threshold = 0.01  # the Ref-YouTube-VOS script's logit threshold
    config.data.max_crop_size = 512  # training frames of at most 512 px, then up to SAM's 1024
    config.eval.short_side = 360  # inference: a 360-px short side, then SAM's resize
    config.eval.davis_shared_track = True  # Ref-DAVIS17: one track per object, through its 4 expressions in turn
    config.model.normalize_image_embedding = True  # (the defaults; configs built on this one may change them)
    config.model.dense.temperature = "fixed"  # Dense Attention's softmax scale: 1/sqrt(C)
    config.model.dense.scale = 0.0
    # HDA was not released: the inference scripts load a second dense conv and normalise no ViT level
    config.model.hda.dense_conv = "separate"
    config.model.hda.level_norm = False
    return config
