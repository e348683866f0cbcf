"""The four classes, their colours, and conversion between colour masks and class indices."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "tumor cell", "non-tumor cell", "cell boundary")
BACKGROUND, TUMOR, NON_TUMOR, BOUNDARY = 0, 1, 2, 3
NUM_CLASSES = len(CLASS_NAMES)

#: RGB colour of each class in masks (index = class).
CLASS_COLORS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """Colour-code a class-index array (H, W) as an RGB mask (H, W, 3) uint8."""
    labels = np.asarray(labels)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels hold class {int(labels.max())}; classes are 0..{NUM_CLASSES - 1}")
    return CLASS_COLORS[labels]


def napari_colors() -> dict[int | None, tuple[float, float, float, float]]:
    """Colours for a napari ``DirectLabelColormap``: background transparent, classes opaque."""
    colors: dict[int | None, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0)}
    for index in range(1, NUM_CLASSES):
        r, g, b = (CLASS_COLORS[index] / 255.0).tolist()
        colors[index] = (r, g, b, 1.0)
    colors[None] = (0.0, 0.0, 0.0, 0.0)
    return colors
