"""Input pipeline throughput (clips/s) of the demo config and the 1024² config, with 0 and 2 workers.

The data settings (image size, T, batch size, text length, augmentation) come from configs/demo.py and
configs/refytvos.py. For each, a synthetic Ref-YouTube-VOS tree is written (the demo's own frame size;
720p frames for the 1024² config, as the real videos) and built, and `make_train_loader` batches are
timed after two warm-up batches (worker start-up excluded). Sentences are tokenised with all-MiniLM-L6-v2
(the demo's encoder; tokenising is a small part of the cost). With `--step-time NAME=SECONDS` (a measured
training step of that config at the same batch size, e.g. from benchmarks/train_step.py) it prints
pipeline rate / step rate: above 1 means the pipeline keeps up.

  python benchmarks/input_pipeline.py --step-time demo=0.8
"""

import argparse
import dataclasses
import os
import runpy
import tempfile
import time
from typing import Dict, Tuple

from etils import epath

from refsam_jax.configs.demo import MINILM
from refsam_jax.data import builders, pipeline, synthetic
from refsam_jax.text.tokenizer import TextTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    config_file: str
    frame_size: Tuple[int, int]  # synthetic video frames (h, w)


SETTINGS = (Setting("demo", "demo.py", (96, 128)), Setting("refytvos", "refytvos.py", (720, 1280)))


def measure(data, tokenizer, workers: int, batches: int) -> float:
    """Clips per second over `batches` batches of the data config `data`, after 2 warm-up batches."""
    data.num_workers = workers
    iterator = iter(pipeline.make_train_loader(data, tokenizer, seed=0, shard_index=0, shard_count=1))
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    elapsed = time.perf_counter() - start
    assert batch["frames"].shape == (data.batch_size, data.num_frames, data.image_size, data.image_size, 3)
    return batches * data.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=10, help="annotated frames per synthetic video")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--step-time", action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument("--only", choices=[s.name for s in SETTINGS], help="run one setting")
    args = parser.parse_args()
    step_times: Dict[str, float] = {}
    for item in args.step_time:
        name, _, seconds = item.partition("=")
        step_times[name] = float(seconds)
    print(
        f"{'config':<9} {'S':>5} {'T':>2} {'B':>3} {'frames':>9} {'workers':>7} {'clips/s':>8} {'ms/clip':>8}  vs step"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            if args.only and setting.name != args.only:
                continue
            data = runpy.run_path(os.path.join(ROOT, "configs", setting.config_file))["get_config"]().data
            tokenizer = TextTokenizer(MINILM, data.max_text_length)
            root = epath.Path(tmp) / setting.name
            synthetic.write_ref_youtube_vos(
                root / "raw", num_videos=args.videos, num_frames=args.frames, size=setting.frame_size, seed=0
            )
            builders.build("ref_youtube_vos", root / "raw", root / "tfds")
            data.data_dir = str(root / "tfds")
            for workers in args.workers:
                rate = measure(data, tokenizer, workers, args.batches)
                versus = "(no --step-time)"
                if setting.name in step_times:
                    step_rate = data.batch_size / step_times[setting.name]
                    versus = f"step {step_rate:.2f} clips/s -> pipeline/step = {rate / step_rate:.2f}"
                frames = "x".join(str(v) for v in setting.frame_size)
                print(
                    f"{setting.name:<9} {data.image_size:>5} {data.num_frames:>2} {data.batch_size:>3} {frames:>9} "
                    f"{workers:>7} {rate:>8.2f} {1000 / rate:>8.1f}  {versus}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
