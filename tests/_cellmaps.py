"""Class-label maps with known cells, for the cell, measure and export tests."""

from __future__ import annotations

import numpy as np

from napari_histoseg.classes import BOUNDARY, NON_TUMOR, TUMOR


def draw_cells(shape, centres, classes, radius=6, ring=2):
    """Disks of the given classes with a ``ring``-px boundary-class rim; returns (labels, areas)."""
    labels = np.zeros(shape, np.uint8)
    areas = []
    for (r, c), cls in zip(centres, classes, strict=True):
        y0, x0 = max(0, int(r - radius - 1)), max(0, int(c - radius - 1))
        y1, x1 = min(shape[0], int(r + radius + 2)), min(shape[1], int(c + radius + 2))
        rows, cols = np.ogrid[y0:y1, x0:x1]
        d = np.hypot(rows - r, cols - c)
        box = labels[y0:y1, x0:x1]
        box[d <= radius] = BOUNDARY
        box[d <= radius - ring] = cls
        areas.append(int((d <= radius).sum()))
    return labels, areas


def lattice(shape, step=18, seed=0, radius=6):
    """Non-touching cells on a jittered lattice over ``shape``: (labels, centres, classes, areas)."""
    rng = np.random.default_rng(seed)
    centres = [
        (y + int(rng.integers(-2, 3)), x + int(rng.integers(-2, 3)))
        for y in range(radius + 3, shape[0] - radius - 3, step)
        for x in range(radius + 3, shape[1] - radius - 3, step)
    ]
    classes = [TUMOR if v < 0.6 else NON_TUMOR for v in rng.random(len(centres))]
    labels, areas = draw_cells(shape, centres, classes, radius=radius)
    return labels, centres, classes, areas
