"""Command-line glue of the example scripts: argument types that reject bad values, a run
folder that never overwrites an earlier run, and a runner that turns expected errors into
one or two lines instead of a traceback (``--debug`` shows the traceback).

Shared by ``cifar10.py``, ``fashion_mnist.py`` and ``airbench94.py`` (a script's own folder
is on ``sys.path``, so they import it as ``cli``). It is glue of the examples, not part of
minidl.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minidl.data._util import DatasetNotFoundError


class CLIError(Exception):
    """An error the user can fix from the command line: printed as one line, exit 1."""


# Errors of a user's making (data, files, values, a missing GPU), shown without a traceback.
EXPECTED = (CLIError, DatasetNotFoundError, OSError, ValueError, RuntimeError, ImportError,
            ArithmeticError)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are two lines (the error and where help is),
    not the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists the "
                     "options)\n")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (``--batch-size 0`` is refused by argparse itself)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a float > 0 (learning rates)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1) (label smoothing)."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def existing_path(text: str) -> str:
    """argparse type: a file or folder that exists. A typo'd ``--data-dir`` is refused here,
    before anything creates that folder or starts a download into it."""
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


def command_line(script: str, argv: list[str] | None) -> str:
    """The command a run was started with, for its ``result.json``: the script's file name
    and the arguments (``argv`` when ``main`` was called with them, else ``sys.argv``)."""
    return " ".join([Path(script).name] + (list(argv) if argv is not None else sys.argv[1:]))


def fresh_run_folder(out: Path, resume: bool, overwrite: bool) -> Path:
    """The folder this run writes to. An earlier run's folder (one with a checkpoint) is
    kept: the new run goes to ``<out>-2``, ``<out>-3``, ... unless ``overwrite`` (then the
    earlier checkpoints are replaced) or ``resume`` (then it continues the earlier run)."""
    if resume or overwrite or not (out / "last.npz").exists():
        return out
    k = 2
    while (out.with_name(f"{out.name}-{k}") / "last.npz").exists():
        k += 1
    fresh = out.with_name(f"{out.name}-{k}")
    print(f"{out} holds an earlier run; this one writes to {fresh} (--resume continues "
          f"the earlier run, --overwrite replaces it)", flush=True)
    return fresh


def run(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Call ``main(argv)`` as a command: an expected error prints ``<script>: error: ...``
    and a hint, and exits with status 1; ``--debug`` anywhere in ``argv`` shows the
    traceback instead. Ctrl-C exits with status 130 and one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    prog = os.path.basename(sys.argv[0]) or "example"
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except EXPECTED as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            print(f"({prog} --help lists the options; add --debug to see the traceback)",
                  file=sys.stderr)
        sys.exit(1)
