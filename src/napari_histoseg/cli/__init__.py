"""The ``histoseg`` command: the same jobs as the napari widgets, from a shell."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..engine.allocator import tune_cpu_allocator
from ..jobs.folder import describe_error, prediction_names
from .common import CliError
from .evaluate import _add_evaluate
from .predict import _add_demo, _add_predict
from .train import _add_train

__all__ = ["CliError", "build_parser", "main", "prediction_names"]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...`` with exit status 2, like every other failure."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="histoseg", description="Tumor-cell segmentation of H&E slides (napari-histoseg command line)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad option (reported in one line, status 2)
        return stop.code if isinstance(stop.code, int) else 2
    tune_cpu_allocator()  # before any thread starts, so that every thread shares the tuned arena
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as err:  # our errors name the file and the problem
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as err:  # a file in the way, a full disk, a setting too large for memory
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished blocks are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
