"""Morphological clean-up of predicted labels: an opening removes isolated noisy dots."""

from __future__ import annotations

import numpy as np
from skimage.morphology import disk, opening


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
