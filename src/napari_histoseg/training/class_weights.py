"""Class weights N / N_c of a training set, from its pixel counts per class."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from ..classes import CLASS_NAMES, NUM_CLASSES
from .samples import Sample


def _label_arrays(items) -> Iterable[np.ndarray]:
    if isinstance(items, np.ndarray):
        items = [items]
    for item in items:
        yield item.labels if isinstance(item, Sample) else np.asarray(item)


def class_counts(samples_or_label_arrays, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixels per class (int64) over samples or label arrays."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for labels in _label_arrays(samples_or_label_arrays):
        flat = labels.ravel()
        if flat.size and int(flat.max()) >= num_classes:
            raise ValueError(f"labels hold class {int(flat.max())}; classes are 0..{num_classes - 1}")
        counts += np.bincount(flat, minlength=num_classes)
    return counts


def weights_from_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class weights N / N_c (float32) from pixel counts.

    A class with no pixels cannot be weighted by N / 0: it gets the largest weight of the present classes and
    a warning naming it (so the loss stays finite if the class appears in a later batch or a different set).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("cannot compute class weights: the training set has no labelled pixels")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = total / counts[present]
    for index in np.flatnonzero(~present):
        name = CLASS_NAMES[index] if index < len(CLASS_NAMES) else f"class {index}"
        warnings.warn(
            f"class {index} ({name}) has no pixels in the training set; giving it weight "
            f"{weights[present].max():.3g} (the largest weight of the present classes)",
            stacklevel=3,
        )
    weights[~present] = weights[present].max()
    return weights.astype(np.float32)


def class_weights(samples_or_label_arrays, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class weights N / N_c over the whole training set (float32); see ``weights_from_counts``."""
    return weights_from_counts(class_counts(samples_or_label_arrays, num_classes))
