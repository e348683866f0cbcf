"""The ``--mpp`` option of ``histoseg predict``: microns per pixel, or ``auto`` (light: no torch import)."""

from __future__ import annotations

import argparse
import math


def mpp_option(text: str) -> float | str:
    """argparse type of ``--mpp``: a positive number of microns per pixel, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give microns per pixel (e.g. 0.25 or 0.5) or 'auto'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: microns per pixel must be a positive number (e.g. 0.25 or 0.5)")
    return value
