"""Decoded training pairs (:class:`Sample`): every pair of a set read and checked at once, and their colours.

Every check runs over the whole set before anything is returned: problems are collected and raised together as
one :class:`~napari_histoseg.training.pair_folders.DatasetError`, so a user fixes a folder in one pass instead of
one file per training attempt.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..analysis.stain_stats import LabStats, lab_stats
from ..classes import NUM_CLASSES
from .image_files import read_array, read_image, read_instances, read_mask
from .pair_folders import DatasetError, Pair

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """A decoded pair: image (H, W, 3) uint8, class labels (H, W) uint8, instances (H, W) int32 or None."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    inst: np.ndarray | None
    reviewed: np.ndarray | None = None  # (H, W) bool: the pixels a user corrected or confirmed (a corrected pair)
    mpp: float | None = None  # the image's microns per pixel, when its pair records it


def pooled_stain_stats(samples: Sequence[Sample]) -> LabStats | None:
    """Colour statistics of a set of decoded pairs, pooled: a folder of patches stands for one slide (the
    statistics of a single patch depend too much on what it shows). ``None`` with too little tissue."""
    return lab_stats([s.image for s in samples])


def load_pairs(pairs: Iterable[Pair], *, tolerance: int = 60) -> tuple[list[Sample], dict]:
    """Decode and validate every pair; return the samples and a report.

    All files are read first and every problem (unreadable file, wrong colour, size mismatch) is collected
    into one :class:`DatasetError`. The report is
    ``{"images": n, "snapped_pixels": n, "pixels_per_class": [n0, n1, n2, n3]}``.
    """
    pairs = list(pairs)
    samples: list[Sample] = []
    problems: list[str] = []
    snapped_total = 0
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for pair in pairs:
        image = labels = inst = None
        try:
            image = read_image(pair.image)
        except DatasetError as exc:
            problems.extend(exc.problems)
        try:
            labels, snapped = read_mask(pair.gt, tolerance=tolerance)
            snapped_total += snapped
        except DatasetError as exc:
            problems.extend(exc.problems)
        if pair.inst is not None:
            try:
                inst = read_instances(pair.inst)
            except DatasetError as exc:
                problems.extend(exc.problems)
        if image is not None and labels is not None and image.shape[:2] != labels.shape:
            problems.append(
                f"{pair.gt}: size {labels.shape[1]}x{labels.shape[0]} does not match its image "
                f"{pair.image.name} ({image.shape[1]}x{image.shape[0]})"
            )
            continue
        if inst is not None and image is not None and inst.shape != image.shape[:2]:
            problems.append(
                f"{pair.inst}: size {inst.shape[1]}x{inst.shape[0]} does not match its image "
                f"{pair.image.name} ({image.shape[1]}x{image.shape[0]})"
            )
            continue
        reviewed, mpp = _review_of(pair, labels, problems)
        if image is not None and labels is not None:
            counts += np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            samples.append(Sample(pair.name, image, labels, inst, reviewed, mpp))
    if problems:
        raise DatasetError(problems)
    if snapped_total:
        log.info("snapped %d noisy mask pixel(s) to the nearest class colour", snapped_total)
    report = {"images": len(samples), "snapped_pixels": snapped_total, "pixels_per_class": counts.tolist()}
    return samples, report


def _review_of(pair: Pair, labels: np.ndarray | None, problems: list[str]) -> tuple[np.ndarray | None, float | None]:
    """The pair's reviewed mask (bool, its labels' size) and recorded um/px; problems appended to ``problems``."""
    reviewed = mpp = None
    if pair.reviewed is not None:
        try:
            mask = read_array(pair.reviewed)
            mask = mask.any(axis=-1) if mask.ndim == 3 else mask.astype(bool)
            if labels is not None and mask.shape != labels.shape:
                problems.append(
                    f"{pair.reviewed}: size {mask.shape[1]}x{mask.shape[0]} does not match its mask "
                    f"{pair.gt.name} ({labels.shape[1]}x{labels.shape[0]})"
                )
            else:
                reviewed = np.ascontiguousarray(mask, dtype=bool)
        except DatasetError as exc:
            problems.extend(exc.problems)
    if pair.meta is not None:
        try:
            value = json.loads(pair.meta.read_text()).get("mpp")
            if value is not None:
                mpp = float(value)
                if not (math.isfinite(mpp) and mpp > 0):
                    raise ValueError(f"mpp must be a positive number, got {value!r}")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{pair.meta}: cannot read the pair's resolution ({exc})")
            mpp = None
    return reviewed, mpp
