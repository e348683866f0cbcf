"""Helpers for the output-safety tests: a tiny random model (fixture) and small synthetic tissue slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model


def tiny_checkpoint(folder: Path) -> Path:
    """A width-0.25 random model at 0.5 um/px, saved in ``folder``."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    return save_checkpoint(folder / "tiny", model, card_for(model, mpp=0.5, name="tiny-random"))


def tissue_rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Pink-purple 'tissue' in the middle half of white glass, enough for the tissue mask and stain statistics."""
    rng = np.random.default_rng(seed)
    rgb = np.full((*shape, 3), 240, np.uint8)
    h, w = shape
    tissue = rng.integers(0, 60, (h // 2, w // 2, 3)).astype(np.uint8) + np.array([150, 80, 160], np.uint8)
    rgb[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = tissue
    return rgb


def write_slide(path: Path, rgb: np.ndarray, **options) -> Path:
    """A tiled TIFF at 0.5 um/px."""
    options = {"photometric": "rgb", "tile": (256, 256), **options}
    tifffile.imwrite(path, rgb, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **options)
    return path
