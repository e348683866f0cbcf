"""What every subcommand shares: the error type, progress on stderr, and the inference options with their
defaults read from :class:`~napari_histoseg.engine.infer.InferenceSettings`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

from ..engine.infer import InferenceSettings
from ..jobs.progress import Progress


class CliError(ValueError):
    """An impossible request, reported as one ``error:`` line with exit status 2."""


class StderrProgress:
    """One-line progress on stderr (silent with ``quiet``, except for failed images); at most one line a second."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, event: Progress) -> None:
        if event.phase == "failed":
            print(f"error: {event.message}", file=sys.stderr)
            return
        if self.quiet or event.phase != "segmenting" or event.unit != "block":
            return
        now = time.monotonic()
        if now - self.last < 1.0 and not event.finished:
            return
        self.last = now
        print(f"\r{event.message}", end="\n" if event.finished else "", file=sys.stderr, flush=True)


FP32_HELP = "compute in float32 throughout (default: bf16 autocast where faster: CUDA, CPUs with AMX or AVX512-BF16)"
TTA_HELP = "test-time augmentation: average the logits over the four flips of the image (4x the work, more accurate)"
CELL_TYPER_HELP = (
    "retype each cell found from a 40 um crop around it with the cell typer (better on breast carcinoma); "
    "default: on with the bundled model, off with --model (it would override a fine-tuned model's types)"
)
NO_STAIN_HELP = "do not map the image's stain colours onto the model's training data (Reinhard normalisation)"
SETTING_NAMES = {f.name for f in fields(InferenceSettings)}


def settings_of(args: argparse.Namespace) -> InferenceSettings:
    """The inference settings the options name; every other one keeps its default (``InferenceSettings``)."""
    return InferenceSettings(**{k: v for k, v in vars(args).items() if k in SETTING_NAMES})


def add_inference_options(p, *, slide_options: bool) -> None:
    """The inference options, their defaults read from :class:`InferenceSettings` (one source for CLI and widgets)."""
    d = InferenceSettings()
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    if slide_options:
        p.add_argument("--tile", type=int, default=d.tile, help="window size in px")
        p.add_argument("--overlap", type=float, default=d.overlap, help="window overlap fraction")
        p.add_argument("--block", type=int, default=d.block, help="block size in px (multiple of 256)")
    p.add_argument(
        "--opening-radius",
        type=int,
        default=d.opening_radius,
        help="radius (px at the model's resolution) of the morphological opening, 0 = none",
    )
    p.add_argument("--no-stain-norm", dest="stain_normalize", action="store_false", help=NO_STAIN_HELP)
    p.add_argument("--fp32", dest="amp", action="store_false", help=FP32_HELP)
    p.add_argument("--tta", dest="test_time_flips", action="store_true", help=TTA_HELP)
    p.add_argument(
        "--cell-typer",
        dest="cell_typer",
        action=argparse.BooleanOptionalAction,
        default=d.cell_typer,
        help=CELL_TYPER_HELP,
    )
