"""Where the tissue is: a fast mask from a slide's low-resolution level (used to skip background blocks) or from
any RGB image, the tissue fraction of a box, and the colour statistics of an image's tissue.

Works on arrays: a slide is only read through its ``levels`` and ``downsample``, so this module imports no IO.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from .stain_stats import LabStats, lab_stats

if TYPE_CHECKING:
    from ..io.slide import Slide

__all__ = ["image_stain_stats", "mask_from_rgb", "slide_thumbnail", "tissue_fraction", "tissue_mask"]

#: Saturation bounds for the Otsu threshold: glass is nearly grey; pale stroma is still above ~0.07.
_MIN_THRESHOLD, _MAX_THRESHOLD = 0.04, 0.15
#: Near-black pixels (slide edges, scanner borders, dark pen) are not tissue.
_DARK = 30
#: Objects smaller than this share of the mask area are dust or debris...
_MIN_OBJECT_FRACTION = 2e-4
#: ... unless they are at least this many level-0 pixels across (squared): a small fragment of tissue is kept
#: on a large slide, whose thumbnail shrinks it to a few pixels.
_KEEP_OBJECT_SIDE = 64
#: Levels narrower than this (a thin strip) are read for the mask at a finer level, within the same pixel budget.
_MIN_MASK_SIDE = 256


def tissue_mask(slide: Slide, *, max_size: int = 2048) -> tuple[np.ndarray, float]:
    """Return ``(mask, downsample)``: a bool tissue mask and the level-0 pixels per mask pixel.

    The mask is computed from the largest level whose longest side is at most ``max_size`` (the smallest level
    when none is); single-level files use their lazily built lower levels. Method: Otsu threshold on HSV
    saturation (clamped to a sensible range, so an all-tissue or all-glass view is not split in two),
    near-black pixels removed, small objects dropped, small holes filled, and a 2-pixel dilation
    so borders are kept.
    """
    rgb, downsample = slide_thumbnail(slide, max_size=max_size)
    return mask_from_rgb(rgb, downsample), downsample


def slide_thumbnail(slide: Slide, *, max_size: int = 2048) -> tuple[np.ndarray, float]:
    """``(rgb, downsample)``: the largest level at most ``max_size`` px on a side (see :func:`tissue_mask`)."""
    if max_size < 16:
        raise ValueError(f"max_size must be at least 16 pixels, got {max_size}")
    level = _pick_level(slide, max_size)
    # Local threads even when a dask.distributed client exists: the graph holds the open file, and the driver reads.
    return np.asarray(slide.levels[level].compute(scheduler="threads"))[..., :3], slide.downsample(level)


def image_stain_stats(rgb: np.ndarray, *, max_size: int = 2048) -> LabStats | None:
    """LAB colour statistics of the tissue of an (H, W, 3) image (a slide's thumbnail, or an image in memory).

    Images larger than ``max_size`` px are sampled with a stride first; tissue is :func:`tissue_mask`'s rule.
    ``None`` when the image holds too little tissue to measure (see `analysis.stain_stats.lab_stats`).
    """
    step = max(1, -(-max(rgb.shape[:2]) // max_size))
    small = np.asarray(rgb[::step, ::step, :3])
    return lab_stats(small, mask_from_rgb(small))


def _pick_level(slide: Slide, max_size: int) -> int:
    """The largest level at most ``max_size`` on a side; for a narrow image (a thin strip of tissue, whose lower
    levels shrink to a pixel or two) the largest level within the same pixel budget, ``max_size`` squared."""
    for i, lv in enumerate(slide.levels):
        height, width = lv.shape[:2]
        if max(height, width) <= max_size:
            return i
        if min(height, width) < _MIN_MASK_SIDE and height * width <= max_size * max_size:
            return i
    return len(slide.levels) - 1


def mask_from_rgb(rgb: np.ndarray, downsample: float | None = None) -> np.ndarray:
    """The tissue mask of an (H, W, 3) image (the method of :func:`tissue_mask`).

    ``downsample``: level-0 pixels per image pixel; when given, an object of at least
    ``_KEEP_OBJECT_SIDE`` squared level-0 pixels is kept however small a share of the image it is.
    """
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)
    if np.ptp(saturation) > 0:
        threshold = float(np.clip(threshold_otsu(saturation, nbins=128), _MIN_THRESHOLD, _MAX_THRESHOLD))
    else:
        threshold = _MAX_THRESHOLD
    mask = (saturation > threshold) & (high > _DARK)
    if min(mask.shape) > 2:  # a strip one or two pixels wide would vanish
        mask = ndi.binary_opening(mask, structure=np.ones((2, 2), bool))
    min_size = int(_MIN_OBJECT_FRACTION * mask.size)
    if downsample:
        min_size = min(min_size, int((_KEEP_OBJECT_SIDE / downsample) ** 2))
    min_size = max(4, min_size)
    labels, n = ndi.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_size
        keep[0] = False
        mask = keep[labels]
    holes = ndi.binary_fill_holes(mask) & ~mask
    hole_labels, n_holes = ndi.label(holes)
    if n_holes:
        hole_sizes = np.bincount(hole_labels.ravel())
        small = hole_sizes < min_size
        small[0] = False
        mask |= small[hole_labels]
    return ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(2, 1), iterations=2)


def tissue_fraction(mask: np.ndarray, downsample: float, y: int, x: int, height: int, width: int) -> float:
    """Tissue fraction of the level-0 box ``(y, x, height, width)``; outside the slide is background."""
    if height <= 0 or width <= 0:
        raise ValueError(f"box size must be positive, got {height}x{width}")
    if downsample <= 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    y0, x0 = math.floor(y / downsample), math.floor(x / downsample)
    y1, x1 = math.ceil((y + height) / downsample), math.ceil((x + width) / downsample)
    total = (y1 - y0) * (x1 - x0)
    inside = mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)]
    return float(np.count_nonzero(inside)) / total
