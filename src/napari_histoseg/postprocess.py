"""Post-processing of class-label maps: cell instances from the boundary class."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from .classes import BOUNDARY, NON_TUMOR, TUMOR

# 4-connectivity: two cells touching only at a corner through a gap in the boundary stay separate.
_CONNECTIVITY_1 = ndi.generate_binary_structure(2, 1)


def cells_from_labels(labels: np.ndarray, *, min_area: int = 4, expand: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Cell instances from a class-label map.

    A cell is a 4-connected region of tumor or non-tumor pixels; the boundary class (and background) separates
    cells. Regions smaller than ``min_area`` pixels (counted before the step below) are dropped. Each cell's
    class is the majority of its tumor / non-tumor pixels (a tie goes to tumor).

    Then each cell takes the boundary-class pixels within ``expand`` pixels (Euclidean) of it, the nearest
    cell winning, so a cell's area includes its boundary ring: the boundary class is drawn as the 2-px inner
    edge of each nucleus, and without this step areas and centroids would describe only the nucleus interior.
    Boundary pixels farther than ``expand`` from any cell, and background, stay 0.

    Returns ``(instances, classes)``: instances (H, W) int32 numbered 1..N, and classes (N + 1,) uint8 where
    ``classes[i]`` is the class of instance ``i`` (1 = tumor, 2 = non-tumor; ``classes[0]`` = 0).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D class map, got shape {labels.shape}")
    cell = (labels == TUMOR) | (labels == NON_TUMOR)
    instances, count = ndi.label(cell, structure=_CONNECTIVITY_1)
    instances = instances.astype(np.int32, copy=False)
    if count == 0:
        return instances, np.zeros(1, dtype=np.uint8)
    flat = instances.ravel()
    area = np.bincount(flat, minlength=count + 1)
    tumor = np.bincount(flat, weights=(labels == TUMOR).ravel(), minlength=count + 1)
    keep = area >= min_area
    keep[0] = False
    # Renumber the kept cells 1..N (0 stays background).
    new_id = np.zeros(count + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    instances = new_id[instances]
    classes = np.zeros(int(keep.sum()) + 1, dtype=np.uint8)
    classes[1:] = np.where(tumor[keep] * 2 >= area[keep], TUMOR, NON_TUMOR)
    if expand > 0 and classes.size > 1:
        grown = expand_labels(instances, distance=expand)
        instances = np.where((labels == BOUNDARY) & (instances == 0), grown, instances)
    return instances.astype(np.int32, copy=False), classes
