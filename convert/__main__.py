"""`python -m convert {sam,text} ...`: port PyTorch / Hugging Face checkpoints to orbax checkpoints."""

import argparse
import importlib
import sys

COMMANDS = {
    "sam": ("convert.sam", "Segment Anything: official .pth or Hugging Face SamModel folder"),
    "text": ("convert.text", "Text encoders (T5, RoBERTa, BERT) from a Hugging Face folder"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
