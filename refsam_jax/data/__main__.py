"""Command line: write synthetic raw data, or build a dataset from its raw layout.

python -m refsam_jax.data synthetic --layout ref_youtube_vos --root /tmp/raw/ytvos --num_items 32
python -m refsam_jax.data build --name ref_youtube_vos --manual_dir /tmp/raw/ytvos --data_dir /tmp/tfds
"""

import argparse
import json
import logging
import os
import sys

from refsam_jax.data import builders, synthetic
from refsam_jax.data.pipeline import builder_config, default_data_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refsam_jax.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    syn = commands.add_parser("synthetic", help="write a synthetic raw layout")
    syn.add_argument(
        "--layout", required=True, choices=["ref_youtube_vos", "ref_davis17", "refcoco", "refcoco+", "refcocog"]
    )
    syn.add_argument("--root", required=True)
    syn.add_argument(
        "--num_items", type=int, default=16, help="train videos (ytvos), valid videos (davis) or images (refcoco)"
    )
    syn.add_argument("--num_frames", type=int, default=8)
    syn.add_argument("--height", type=int, default=96)
    syn.add_argument("--width", type=int, default=128)
    syn.add_argument("--seed", type=int, default=0)
    build = commands.add_parser("build", help="build array_record files from a raw layout")
    build.add_argument(
        "--name", required=True, help="ref_youtube_vos, ref_davis17, refcoco/<refcoco|refcoco_plus|refcocog>"
    )
    build.add_argument("--manual_dir", required=True)
    build.add_argument("--data_dir", required=True)
    build.add_argument("--on_error", default="raise", choices=["raise", "skip"])
    build.add_argument("--rebuild", action="store_true",
                       help="delete and rebuild a dataset that was built from other raw files")
    build.add_argument("--heldout_fraction", type=float, default=None,
                       help="ref_youtube_vos: fraction of train videos held out (default 0.05), as data.heldout_fraction")
    build.add_argument("--heldout_seed", type=int, default=None, help="ref_youtube_vos: seed of the held-out draw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "build":
        try:
            data = default_data_config()
            for key in ("heldout_fraction", "heldout_seed"):
                if getattr(args, key) is not None:
                    data[key] = getattr(args, key)
            builder = builders.build(args.name, os.path.abspath(args.manual_dir), os.path.abspath(args.data_dir),
                                     on_error=args.on_error, config=builder_config(args.name, data),
                                     rebuild=args.rebuild)
        except (FileNotFoundError, builders.DataError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        splits = {k: v.num_examples for k, v in builder.info.splits.items()}
        summary = {"data_path": str(builder.data_path), "splits": splits, "skipped": builder.skipped}
    else:
        size = (args.height, args.width)
        if args.layout == "ref_youtube_vos":
            manifest = synthetic.write_ref_youtube_vos(args.root, args.num_items, args.num_frames, size, args.seed)
        elif args.layout == "ref_davis17":
            manifest = synthetic.write_ref_davis17(args.root, args.num_items, args.num_frames, size, args.seed)
        else:
            manifest = synthetic.write_refcoco(args.root, args.layout, args.num_items, size, args.seed)
        items = manifest.get("splits", manifest)
        summary = {"root": manifest["root"], "items": {k: len(v) for k, v in items.items() if isinstance(v, dict)}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
