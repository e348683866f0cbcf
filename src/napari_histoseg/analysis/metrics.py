"""Segmentation metrics shared by validation during training and by ``histoseg evaluate``.

Pixel level
    Dice of each class c: 2 |P_c & G_c| / (|P_c| + |G_c|), from a confusion matrix summed over all images
    (so large images weigh more than small ones). A class absent from both prediction and ground truth has an
    undefined Dice: it is NaN, and means over classes skip NaN. ``mean_f1`` is the mean Dice (= pixel F1) over
    the three cell classes 1..3 (tumor, non-tumor, boundary).

Object level (as in HoVer-Net's ``compute_stats.py``, ``run_nuclei_type_stat``; Graham et al. 2019)
    Cells are instances: predicted cells come from :func:`napari_histoseg.analysis.instances.cells_from_labels`; true
    cells from the instance map when one is given (each instance's class = majority of its tumor / non-tumor
    gt pixels), else from ``cells_from_labels`` on the gt classes. Predicted and true cells of an image are
    paired one-to-one by their centroids: the optimal assignment (``scipy.optimize.linear_sum_assignment``) on
    Euclidean distance, then pairs farther apart than ``match_radius`` (12 px by default, HoVer-Net's value at
    40x) are dropped. Counts are pooled over all images before the scores are computed, as HoVer-Net does.

    Detection: TP_d = paired cells, FP_d = unpaired predicted, FN_d = unpaired true;
    F1_d = 2 TP_d / (2 TP_d + FP_d + FN_d).

    Type F1 of class c (tumor or non-tumor), HoVer-Net's weighted formula::

        F1_c = 2 (TP_c + TN_c) / (2 (TP_c + TN_c) + 2 FP_c + 2 FN_c + FP_dc + FN_dc)

    where, over the paired cells whose true or predicted class is c, TP_c = both c, FP_c = predicted c but
    true not c, FN_c = true c but predicted not c, and TN_c = neither c (always 0 after that restriction,
    exactly as in HoVer-Net's code); FP_dc = unpaired predicted cells of class c, FN_dc = unpaired true cells
    of class c. A true instance with no tumor / non-tumor pixel (a nucleus drawn entirely as boundary) has no
    class: it counts for detection but is ignored when scoring types, like HoVer-Net's type -1 for
    non-exhaustive labels. A score whose denominator is 0 (no cells of that kind anywhere) is NaN.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from ..classes import NON_TUMOR, NUM_CLASSES, TUMOR
from .instances import (
    DEFAULT_EDGE_MIN_AREA,
    DEFAULT_MIN_AREA,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_SPLIT_RATIO,
    cells_from_labels,
)

#: Largest distance (px) between the centroids of a predicted and a true cell that count as one: HoVer-Net's value.
MATCH_RADIUS = 12.0

_TYPES = (TUMOR, NON_TUMOR)

#: The scalar scores of :meth:`SegmentationMetrics.compute`, in the order tables and CSV files show them.
SCALAR_METRICS = (
    "mean_f1",
    "detection_f1",
    "detection_precision",
    "detection_recall",
    "type_f1_tumor",
    "type_f1_non_tumor",
)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be 2-D maps of the same shape")


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixel confusion matrix (num_classes, num_classes) int64: rows = ground truth, columns = prediction."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt)
    for what, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.size and (int(arr.max()) >= num_classes or int(arr.min()) < 0):
            raise ValueError(f"{what} holds classes outside 0..{num_classes - 1}")
    index = gt.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    inter = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), np.nan)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Dice of each class (float64); NaN for a class absent from both ``pred`` and ``gt``."""
    return _dice_from_confusion(confusion_matrix(pred, gt, num_classes))


def instance_centroids(instances: np.ndarray, count: int | None = None) -> np.ndarray:
    """Centroids (N, 2) as (row, col) of instances 1..N; an id without pixels gets NaN."""
    instances = np.asarray(instances)
    n = int(instances.max(initial=0)) if count is None else int(count)
    flat = instances.ravel()
    size = n + 1
    area = np.bincount(flat, minlength=size)[:size].astype(np.float64)
    rows, cols = np.indices(instances.shape)
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=size)[:size]
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=size)[:size]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([sum_r / area, sum_c / area], axis=1)[1:]


def renumber_instances(instances: np.ndarray) -> np.ndarray:
    """The instance map with its ids renumbered 1..N in order, 0 kept as background (instance maps may skip ids,
    e.g. patches cut from a larger map)."""
    instances = np.asarray(instances)
    ids, renumbered = np.unique(instances, return_inverse=True)
    renumbered = renumbered.reshape(instances.shape)
    return renumbered + 1 if ids[0] != 0 else renumbered


def instance_classes(instances: np.ndarray, labels: np.ndarray, count: int | None = None) -> np.ndarray:
    """Class of instances 1..N (array of N + 1, index 0 unused): majority of tumor / non-tumor pixels in each.

    Ties go to tumor; an instance without any tumor or non-tumor pixel gets 0 (no class).
    """
    instances, labels = np.asarray(instances), np.asarray(labels)
    _check_pair(instances, labels)
    n = int(instances.max(initial=0)) if count is None else int(count)
    flat = instances.ravel()
    tumor = np.bincount(flat, weights=(labels == TUMOR).ravel(), minlength=n + 1)[: n + 1]
    other = np.bincount(flat, weights=(labels == NON_TUMOR).ravel(), minlength=n + 1)[: n + 1]
    classes = np.where(tumor + other == 0, 0, np.where(tumor >= other, TUMOR, NON_TUMOR)).astype(np.uint8)
    classes[0] = 0
    return classes


def match_centroids(
    pred_centroids: np.ndarray, gt_centroids: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one pairing of centroids within ``radius`` (HoVer-Net's ``pair_coordinates``).

    Returns ``(pairs, unmatched_pred, unmatched_gt)``: pairs (K, 2) of (pred index, gt index), and the indices
    of the predicted and true centroids left unpaired.
    """
    pred = np.asarray(pred_centroids, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt_centroids, dtype=np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.arange(len(pred)), np.arange(len(gt))
    distance = cdist(pred, gt)
    rows, cols = linear_sum_assignment(distance)
    close = distance[rows, cols] <= radius
    pairs = np.stack([rows[close], cols[close]], axis=1).astype(np.int64)
    unmatched_pred = np.setdiff1d(np.arange(len(pred)), pairs[:, 0])
    unmatched_gt = np.setdiff1d(np.arange(len(gt)), pairs[:, 1])
    return pairs, unmatched_pred, unmatched_gt


def type_counts(
    paired_pred_type: np.ndarray,
    paired_gt_type: np.ndarray,
    unpaired_pred_type: np.ndarray,
    unpaired_gt_type: np.ndarray,
    type_id: int,
    count_tn: bool = False,
) -> np.ndarray:
    """HoVer-Net's counts for class ``type_id``: [TP_c, TN_c, FP_c, FN_c, FP_d, FN_d] (int64).

    True cells of type 0 (no class) are ignored among the pairs. As in HoVer-Net's code, only pairs where the truth
    or the prediction is ``type_id`` are counted, so TN_c is 0 with two types; ``count_tn`` keeps every pair, so
    TN_c counts the pairs typed right as another type (the equation as the HoVer-Net paper writes it).
    """
    pp, pg = np.asarray(paired_pred_type), np.asarray(paired_gt_type)
    known = pg != 0
    pp, pg = pp[known], pg[known]
    if not count_tn:
        relevant = (pg == type_id) | (pp == type_id)
        pp, pg = pp[relevant], pg[relevant]
    tp = np.sum((pg == type_id) & (pp == type_id))
    tn = np.sum((pg != type_id) & (pp != type_id))
    fp = np.sum((pg != type_id) & (pp == type_id))
    fn = np.sum((pg == type_id) & (pp != type_id))
    fp_d = np.sum(np.asarray(unpaired_pred_type) == type_id)
    fn_d = np.sum(np.asarray(unpaired_gt_type) == type_id)
    return np.array([tp, tn, fp, fn, fp_d, fn_d], dtype=np.int64)


def type_f1(
    paired_pred_type: np.ndarray,
    paired_gt_type: np.ndarray,
    unpaired_pred_type: np.ndarray,
    unpaired_gt_type: np.ndarray,
    type_id: int,
) -> float:
    """HoVer-Net type F1 of class ``type_id`` from paired and unpaired cell classes (module doc)."""
    return type_f1_from_counts(
        type_counts(paired_pred_type, paired_gt_type, unpaired_pred_type, unpaired_gt_type, type_id)
    )


def type_f1_from_counts(counts: np.ndarray) -> float:
    """F1_c = 2(TP+TN) / (2(TP+TN) + 2FP + 2FN + FP_d + FN_d) from ``type_counts``; NaN if 0 / 0."""
    tp, tn, fp, fn, fp_d, fn_d = (int(x) for x in counts)
    denominator = 2 * (tp + tn) + 2 * fp + 2 * fn + fp_d + fn_d
    return 2 * (tp + tn) / denominator if denominator else float("nan")


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else float("nan")


class SegmentationMetrics:
    """Accumulates pixel and object metrics over images; ``compute()`` gives the pooled scores.

    ``min_area``, ``edge_min_area``, ``split_depth`` and ``split_ratio`` are the cell rules of
    :func:`~napari_histoseg.analysis.instances.cells_from_labels` (for the predicted cells, and for true cells taken
    from a class map); the defaults are what inference uses.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        match_radius: float = MATCH_RADIUS,
        min_area: int = DEFAULT_MIN_AREA,
        edge_min_area: int | None = DEFAULT_EDGE_MIN_AREA,
        split_depth: float = DEFAULT_SPLIT_DEPTH,
        split_ratio: float = DEFAULT_SPLIT_RATIO,
    ):
        if match_radius <= 0:
            raise ValueError(f"match_radius must be positive, got {match_radius}")
        self.num_classes = num_classes
        self.match_radius = float(match_radius)
        self._cell_rules = {
            "min_area": min_area,
            "edge_min_area": edge_min_area,
            "split_depth": split_depth,
            "split_ratio": split_ratio,
        }
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.tp_d = self.fp_d = self.fn_d = 0
        self.n_true = self.n_pred = 0
        self.images = 0
        self._type_counts = {t: np.zeros(6, dtype=np.int64) for t in _TYPES}

    def update(self, pred_labels: np.ndarray, gt_labels: np.ndarray, gt_inst: np.ndarray | None = None) -> None:
        """Add one image: predicted and true class maps (H, W), and optionally the true instance map."""
        pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
        self.confusion += confusion_matrix(pred_labels, gt_labels, self.num_classes)

        pred_inst, pred_cls = cells_from_labels(pred_labels, **self._cell_rules)
        if gt_inst is not None and np.asarray(gt_inst).size:
            gt_inst = np.asarray(gt_inst)
            _check_pair(gt_inst, gt_labels)
            gt_inst = renumber_instances(gt_inst)
            gt_cls = instance_classes(gt_inst, gt_labels)
        else:
            gt_inst, gt_cls = cells_from_labels(gt_labels, **self._cell_rules)

        self.add_cells(
            instance_centroids(pred_inst, len(pred_cls) - 1),
            pred_cls[1:],
            instance_centroids(gt_inst, len(gt_cls) - 1),
            gt_cls[1:],
        )
        self.images += 1

    def add_cells(
        self, pred_centroids: np.ndarray, pred_types: np.ndarray, gt_centroids: np.ndarray, gt_types: np.ndarray
    ) -> None:
        """Add the cells of one image for the object-level scores: centroids (N, 2) (row, col) in one frame, and
        their classes (N,) (1 tumor, 2 non-tumor; 0 for a true cell of no class). ``update`` calls it; call it
        directly for cells found on another grid (centroids mapped into the ground truth's frame first)."""
        pred_types, gt_types = np.asarray(pred_types), np.asarray(gt_types)
        pairs, un_pred, un_gt = match_centroids(pred_centroids, gt_centroids, self.match_radius)
        self.tp_d += len(pairs)
        self.fp_d += len(un_pred)
        self.fn_d += len(un_gt)
        self.n_pred += len(pred_types)
        self.n_true += len(gt_types)
        for t in _TYPES:
            self._type_counts[t] += type_counts(
                pred_types[pairs[:, 0]], gt_types[pairs[:, 1]], pred_types[un_pred], gt_types[un_gt], t
            )

    def compute(self) -> dict:
        """Pooled scores (see the module docstring): floats, NaN where undefined, and counts."""
        dice = _dice_from_confusion(self.confusion)
        cell_dice = dice[1:NUM_CLASSES]  # every class but background
        mean_f1 = float(np.nanmean(cell_dice)) if np.isfinite(cell_dice).any() else float("nan")
        tp, fp, fn = self.tp_d, self.fp_d, self.fn_d
        return {
            "dice": [float(x) for x in dice],
            "mean_f1": mean_f1,
            "detection_f1": _f1(tp, fp, fn),
            "detection_precision": tp / (tp + fp) if tp + fp else float("nan"),
            "detection_recall": tp / (tp + fn) if tp + fn else float("nan"),
            "type_f1_tumor": type_f1_from_counts(self._type_counts[TUMOR]),
            "type_f1_non_tumor": type_f1_from_counts(self._type_counts[NON_TUMOR]),
            "n_true_cells": int(self.n_true),
            "n_pred_cells": int(self.n_pred),
            "images": int(self.images),
        }
