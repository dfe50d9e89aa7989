"""Ports PyTorch / Hugging Face checkpoints to orbax checkpoints of our NNX models.

    python -m convert sam --checkpoint sam_vit_b_01ec64.pth --model-type vit_b --output ckpt/sam_vit_b --verify
    python -m convert sam --hf sam-vit-base --output ckpt/sam_vit_b --verify
    python -m convert text --hf t5-3b --output ckpt/t5_3b --verify

(`python -m convert` works from a clone's root; `python -m refsam_jax.convert` anywhere.) `sam` reads an
official segment_anything state dict (the architecture comes from the weights' shapes; `--model-type` is a
check) or a Hugging Face SamModel folder, and writes what `refsam_jax.sam.build_sam(checkpoint=...)` loads.
`text` reads a Hugging Face T5 / mT5 / BERT / RoBERTa / XLM-R folder and writes what
`refsam_jax.text.load_text_encoder` loads (config, tokenizer files and the NNX state). `--verify` runs the
PyTorch model (needs the `convert` extra) on the same weights and fails, writing nothing, if they differ.
"""

import argparse
import logging
import os
import sys
import time

from refsam_jax.porting.torch_to_nnx import CheckpointMismatchError
from refsam_jax.sam import hf_params as sam_hf_params
from refsam_jax.sam import params as sam_params
from refsam_jax.sam.build import SamCheckpointError, save_sam
from refsam_jax.sam.config import SAM_CONFIGS, model_type_of
from refsam_jax.text import params as text_params
from refsam_jax.text.encoder import (
    CONFIG_FILE,
    abstract_text_encoder,
    load_text_encoder,
    read_hf_config,
    save_text_encoder,
)
from refsam_jax.text.tokenizer import TextTokenizer

log = logging.getLogger("convert")


def add_sam_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PTH", help="official segment_anything state dict (.pth)")
    source.add_argument("--hf", metavar="DIR", help="Hugging Face SamModel folder (config.json + weights)")
    parser.add_argument("--model-type", choices=sorted(SAM_CONFIGS),
                        help="expected architecture; an error if the checkpoint holds another one")
    parser.add_argument("--output", required=True, metavar="DIR", help="checkpoint directory to write")
    parser.add_argument("--verify", action="store_true",
                        help="compare against the PyTorch model on a random input before saving")


def convert_sam(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # also when an imported library installed a handler first
    start = time.time()
    try:
        if args.hf:
            log.info("reading Hugging Face SAM folder %s", args.hf)
            config, state_dict = sam_hf_params.load_hf_sam(args.hf)
            source = args.hf
        else:
            log.info("reading %s", args.checkpoint)
            state_dict = sam_params.load_official_state_dict(args.checkpoint)
            config = sam_params.config_from_state_dict(state_dict, source=args.checkpoint)
            source = args.checkpoint
        model_type = model_type_of(config)
        log.info("architecture: %s (embed dim %d, depth %d, %d px)", model_type, config.encoder_embed_dim,
                 config.encoder_depth, config.img_size)
        if args.model_type is not None and args.model_type != model_type:
            raise SamCheckpointError(f"{source} holds a SAM {model_type} (embed dim {config.encoder_embed_dim}, "
                                     f"depth {config.encoder_depth}), but --model-type {args.model_type} was given")
        log.info("converting %d tensors", len(state_dict))
        model = sam_params.sam_from_state_dict(state_dict, config, source=source)
        if args.verify:
            if args.hf:
                sam_hf_params.verify_hf(model, args.hf)  # raises SamCheckpointError when over tolerance
            elif not sam_params.verify(model, state_dict):
                raise SamCheckpointError(f"{source}: the converted model differs from segment_anything's; "
                                         f"{args.output} was not written")
        log.info("writing %s", args.output)
        save_sam(model, args.output)
    except (FileNotFoundError, SamCheckpointError, CheckpointMismatchError) as e:
        log.error("%s", e)
        return 1
    log.info("done in %.1f s", time.time() - start)
    return 0


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face folder: config.json, tokenizer files, weights")
    parser.add_argument("--output", required=True, help="new directory for the converted checkpoint")
    parser.add_argument("--verify", action="store_true",
                        help=f"compare with the transformers PyTorch model (fails above {text_params.TOLERANCE:g})")
    parser.add_argument("--max_length", type=int, default=32, help="tokens per sentence for --verify")


def convert_text(args: argparse.Namespace) -> int:
    config = read_hf_config(args.hf)
    model = abstract_text_encoder(config, source=os.path.join(args.hf, CONFIG_FILE))
    text_params.load_hf_weights(model, args.hf, config["model_type"])
    TextTokenizer(args.hf, args.max_length)
    save_text_encoder(model, args.hf, args.output)
    print(f"wrote {config['model_type']} text encoder (width {model.width}) to {args.output}")
    if args.verify:
        delta = text_params.verify(load_text_encoder(args.output, args.max_length), args.hf)
        print(f"max|Δ| vs transformers {text_params.REFERENCE_CLASSES[config['model_type']]}: {delta:.3g} "
              f"(tolerance {text_params.TOLERANCE:g})")
        if not delta <= text_params.TOLERANCE:
            print(f"verification FAILED: {args.output} differs from {args.hf}", file=sys.stderr)
            return 1
    return 0


COMMANDS = {
    "sam": (add_sam_arguments, convert_sam, "Segment Anything: official .pth or Hugging Face SamModel folder"),
    "text": (add_text_arguments, convert_text, "Text encoders (T5, RoBERTa, BERT) from a Hugging Face folder"),
}


def main(argv=None) -> int:
    """Runs one command; bad input raises (FileNotFoundError, ValueError, ...) or returns 1."""
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][1](args)


def cli(argv=None) -> int:
    """`main` with bad input reported as one line on stderr (exit status 1) instead of a traceback."""
    try:
        return main(argv)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
