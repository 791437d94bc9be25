"""``python -m minidl``: minidl's command line, one subcommand per task.

    python -m minidl predict --checkpoint runs/cifar10/best.npz cat.jpg dog.png [--top 3]
    python -m minidl predict --checkpoint best.npz photos/*.jpg --json

``predict`` prints, for each file, its most probable classes with their probabilities
(``--json``: one JSON list for programs). Errors a user can fix (a missing or foreign
checkpoint, one without prediction metadata, an image that does not decode) print one
line and exit with status 1; ``--debug`` shows the traceback instead. With no
subcommand, the help is printed. (Data-parallel launching is ``python -m
minidl.distributed``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence

# Errors of the user's making: files, formats, values. Anything else is a bug and keeps
# its traceback.
_EXPECTED = (OSError, ValueError, ImportError)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minidl", description="minidl's command line.",
        epilog="`python -m minidl COMMAND --help` describes a command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = commands.add_parser(
        "predict", help="classify image files with a trained checkpoint",
        description="Classify image files with a checkpoint that carries prediction "
                    "metadata (architecture, class names, input size, normalization), such "
                    "as those examples/cifar10.py writes.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint (.npz) with prediction metadata, e.g. "
                        "runs/cifar10/best.npz")
    p.add_argument("--top", type=_positive_int, default=3, help="classes shown per image "
                                                                "(default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON list: "
                   '[{"image": ..., "top": [{"class": ..., "probability": ...}, ...]}, ...]')
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=256,
                   help="images per forward pass (default: 256)")
    p.add_argument("--debug", action="store_true", help="show the traceback of errors")
    p.set_defaults(run=_predict)
    return parser


def _predict(args: argparse.Namespace) -> None:
    from minidl.inference import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    results = predictor.predict(args.images, top=args.top, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{"image": image, "top": [{"class": c, "probability": p}
                                                   for c, p in top]}
                          for image, top in zip(args.images, results)], indent=1))
        return
    for image, top in zip(args.images, results):
        print(f"{image}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.run(args)
    except _EXPECTED as exc:
        if args.debug:
            traceback.print_exc()
        else:
            message = str(exc).removeprefix(f"{args.command}: ")  # said once, in front
            print(f"python -m minidl {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\npython -m minidl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
