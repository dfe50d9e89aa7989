"""Evaluation CLI; each subcommand ends with one JSON line on stdout.

  python -m refsam_jax.evaluation davis --pred DIR --gt DAVIS_ROOT [--csv PATH]
  python -m refsam_jax.evaluation ytvos --pred DIR --gt-root YTVOS_ROOT [--heldout-file F | --videos V ...]
  python -m refsam_jax.evaluation zip --ytvos-root YTVOS_ROOT (--pred DIR --out ZIP | --check ZIP)
  python -m refsam_jax.evaluation refcoco --pred DIR --gt DIR

Scores are fractions in [0, 1]. Bad input exits with status 2 and a message naming the file.
"""

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

from refsam_jax.evaluation import EvaluationInputError, describe_paths, ref_davis, ref_ytvos, refcoco


def _report_missing(missing: List[str]) -> None:
    if missing:
        print(f"skipped {len(missing)} missing prediction(s), scored as empty: "
              f"{describe_paths(missing)}", file=sys.stderr)


def _davis(args: argparse.Namespace) -> dict:
    result = ref_davis.evaluate_ref_davis(
        args.pred, args.gt, subset=args.set, annotators=args.annotators, sequences=args.sequences,
        matching=args.matching, skip_missing=args.skip_missing, resolution=args.resolution)
    print(result.format_table())
    if result.sequences_without_objects:
        print("no GT object in the first frame (not scored, as in the official evaluation): "
              f"{describe_paths(result.sequences_without_objects)}", file=sys.stderr)
    _report_missing([m for s in result.sets.values() for m in s.missing])
    if args.csv:
        result.write_csv(args.csv)
    return result.summary()


def _ytvos(args: argparse.Namespace) -> dict:
    videos = args.videos or (ref_ytvos.read_video_list(args.heldout_file) if args.heldout_file else None)
    result = ref_ytvos.evaluate_ytvos_local(args.pred, args.gt_root, videos, args.skip_missing)
    _report_missing(result.missing)
    if args.csv:
        result.write_csv(args.csv)
    return result.summary()


def _zip(args: argparse.Namespace) -> dict:
    meta_root = os.path.join(args.ytvos_root, "meta_expressions")
    valid_meta = args.valid_meta or os.path.join(meta_root, "valid", "meta_expressions.json")
    test_meta = args.test_meta or os.path.join(meta_root, "test", "meta_expressions.json")
    images_root = args.images_root
    if images_root is None and os.path.isdir(os.path.join(args.ytvos_root, "valid", "JPEGImages")):
        images_root = os.path.join(args.ytvos_root, "valid", "JPEGImages")
    num_videos = args.num_videos or None
    if args.check:
        report = ref_ytvos.check_submission_zip(args.check, valid_meta, test_meta, images_root,
                                                num_videos)
        return {"zip": args.check, **report.summary()}
    report = ref_ytvos.write_submission_zip(args.pred, valid_meta, test_meta, args.out, images_root,
                                            args.skip_missing, num_videos)
    if report.missing:
        print(f"left out {len(report.missing)} missing mask(s): {describe_paths(report.missing)}",
              file=sys.stderr)
    return {"zip": args.out, **report.summary()}


def _refcoco(args: argparse.Namespace) -> dict:
    metrics, missing = refcoco.evaluate_mask_folders(args.pred, args.gt, args.skip_missing)
    _report_missing(missing)
    return {**metrics.result(), "missing": len(missing)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refsam_jax.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    skip_help = "score missing prediction files as empty masks and list them instead of failing"

    davis = sub.add_parser("davis", help="Ref-DAVIS17 J&F averaged over the 4 expression sets")
    davis.add_argument("--pred", required=True, help="folder with 0/..3/ (or anno_0/..anno_3/) "
                       "sub-folders of <video>/<frame>.png index PNGs")
    davis.add_argument("--gt", required=True, help="the DAVIS folder (Annotations_unsupervised/, "
                       "ImageSets/2017/)")
    davis.add_argument("--set", default="val", help="ImageSets/2017/<set>.txt (default val)")
    davis.add_argument("--sequences", nargs="+", help="evaluate only these sequences")
    davis.add_argument("--annotators", nargs="+", type=int, choices=ref_davis.ANNOTATORS,
                       default=list(ref_davis.ANNOTATORS),
                       help="expression sets to evaluate (default 0 1 2 3)")
    davis.add_argument("--matching", choices=ref_davis.MATCHINGS, default="hungarian",
                       help="hungarian = the official unsupervised matching; identity = id k <-> object k")
    davis.add_argument("--resolution", default="480p")
    davis.add_argument("--csv", help="write the per-object table here")
    davis.add_argument("--skip-missing", action="store_true", help=skip_help)
    davis.set_defaults(run=_davis)

    ytvos = sub.add_parser("ytvos", help="local Ref-YouTube-VOS J&F on held-out train videos")
    ytvos.add_argument("--pred", required=True, help="folder of <video>/<exp_id>/<frame>.png masks")
    ytvos.add_argument("--gt-root", required=True, help="the ref-youtube-vos folder (train/Annotations, "
                       "meta_expressions/train)")
    videos = ytvos.add_mutually_exclusive_group()
    videos.add_argument("--videos", nargs="+", help="video ids to score (default: every video "
                        "folder in --pred)")
    videos.add_argument("--heldout-file", help="file with one held-out video id per line")
    ytvos.add_argument("--csv", help="write per-expression scores here")
    ytvos.add_argument("--skip-missing", action="store_true", help=skip_help)
    ytvos.set_defaults(run=_ytvos)

    zip_ = sub.add_parser("zip", help="build (or check) the Ref-YouTube-VOS valid submission zip")
    zip_.add_argument("--ytvos-root", required=True, help="the ref-youtube-vos folder "
                      "(meta_expressions/{valid,test}; valid/JPEGImages gives the frame sizes)")
    action = zip_.add_mutually_exclusive_group(required=True)
    action.add_argument("--pred", help="folder of <video>/<exp_id>/<frame>.png 0/255 masks to zip")
    action.add_argument("--check", metavar="ZIP", help="check an existing zip instead")
    zip_.add_argument("--out", help="the zip to write (with --pred)")
    zip_.add_argument("--valid-meta", help="default <ytvos-root>/meta_expressions/valid/...")
    zip_.add_argument("--test-meta", help="default <ytvos-root>/meta_expressions/test/...")
    zip_.add_argument("--images-root", help="default <ytvos-root>/valid/JPEGImages if present")
    zip_.add_argument("--num-videos", type=int, default=ref_ytvos.NUM_VALID_VIDEOS,
                      help="expected number of valid videos (0: no check)")
    zip_.add_argument("--skip-missing", action="store_true",
                      help="leave missing masks out of the zip and list them instead of failing")
    zip_.set_defaults(run=_zip)

    coco = sub.add_parser("refcoco", help="oIoU, mIoU, P@0.5..0.9 of one PNG mask per sample")
    coco.add_argument("--pred", required=True, help="folder of <sample>.png predicted masks")
    coco.add_argument("--gt", required=True, help="folder of <sample>.png ground-truth masks")
    coco.add_argument("--skip-missing", action="store_true", help=skip_help)
    coco.set_defaults(run=_refcoco)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "zip" and args.pred and not args.out:
        parser.error("zip --pred needs --out")
    try:
        summary = args.run(args)
    except EvaluationInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
