"""Morphological clean-up of predicted labels: an opening removes isolated noisy dots."""

from __future__ import annotations

import numpy as np
from skimage.morphology import disk, opening

#: Radius (px at the model's resolution) of the opening applied to predictions: inference, evaluation, training.
DEFAULT_OPENING_RADIUS = 2


def radius_at(radius: int, factor: float) -> int:
    """An opening radius given at the model's resolution, in pixels of a grid ``factor`` times coarser.

    (``factor`` 2: labels of a 20x slide segmented by a 40x model.) A positive radius stays at least 1 px.
    """
    if radius <= 0:
        return 0
    return max(1, int(radius / factor + 0.5))


def open_labels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Remove cell-class specks thinner than a disk of ``radius`` px.

    The opening acts on the foreground (every non-background class together): pixels it removes become
    background, the others keep their class. Opening the foreground as one mask, rather than each class, keeps the
    thin boundary ring around a nucleus from being erased. Pixels beyond the array edge are ignored, so a block
    cropped to the image and grown by ``2 * radius`` opens exactly as the whole image does.
    """
    if radius <= 0:
        return labels
    foreground = labels > 0
    opened = opening(foreground, disk(radius), mode="ignore")
    out = labels.copy()
    out[foreground & ~opened] = 0
    return out
