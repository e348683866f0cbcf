"""Metrics and cell instances, exact on hand-made label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_histoseg.analysis.instances import cells_from_labels
from napari_histoseg.analysis.metrics import (
    SegmentationMetrics,
    dice_per_class,
    instance_centroids,
    match_centroids,
    renumber_instances,
    type_f1,
)
from napari_histoseg.classes import BOUNDARY, NON_TUMOR, TUMOR


def _cells(centres, classes, shape=(160, 160), radius=7, ring=2):
    """Disks of the given classes with a ``ring``-px boundary-class inner edge, like the CoNSeP masks."""
    labels = np.zeros(shape, np.uint8)
    inst = np.zeros(shape, np.int32)
    rows, cols = np.indices(shape)
    for i, ((r, c), cls) in enumerate(zip(centres, classes, strict=True), start=1):
        d = np.hypot(rows - r, cols - c)
        labels[d <= radius] = BOUNDARY
        labels[d <= radius - ring] = cls
        inst[d <= radius] = i
    return labels, inst


CENTRES = [(30, 30), (30, 90), (90, 40), (100, 110), (130, 60)]
CLASSES = [TUMOR, TUMOR, NON_TUMOR, TUMOR, NON_TUMOR]


def _shift(labels, dy, dx):
    return np.roll(labels, (dy, dx), axis=(0, 1))


# --- cells_from_labels -------------------------------------------------------------------------------------


def test_cells_from_labels_counts_classes_and_includes_boundary_ring():
    labels, inst = _cells(CENTRES, CLASSES)
    cells, classes = cells_from_labels(labels)
    assert cells.dtype == np.int32 and cells.max() == 5 and classes.tolist() == [0, *CLASSES]
    # With the boundary ring given back, each cell is exactly the drawn disk.
    for i in range(1, 6):
        true_id = np.bincount(inst[cells == i]).argmax()
        assert np.array_equal(cells == i, inst == true_id)
    cells_no_ring, _ = cells_from_labels(labels, expand=0)
    assert (cells_no_ring > 0).sum() == (labels == TUMOR).sum() + (labels == NON_TUMOR).sum()


def test_cells_touching_through_boundary_are_separate_and_majority_sets_class():
    labels = np.zeros((10, 20), np.uint8)
    labels[2:8, 2:9] = TUMOR
    labels[2:8, 9] = BOUNDARY  # a 1-px boundary wall between two cells
    labels[2:8, 10:18] = NON_TUMOR
    labels[2:4, 10:12] = TUMOR  # 4 tumor pixels in a 48-px non-tumor cell
    labels[0, 0] = TUMOR  # a 1-px speck, below min_area
    cells, classes = cells_from_labels(labels, min_area=4)
    assert cells.max() == 2
    assert classes.tolist() == [0, TUMOR, NON_TUMOR]
    assert cells[0, 0] == 0
    assert (cells[2:8, 9] > 0).all()  # the wall went to the cells
    assert cells_from_labels(labels, min_area=1)[0].max() == 3
    empty_cells, empty_classes = cells_from_labels(np.zeros((5, 5), np.uint8))
    assert empty_cells.max() == 0 and empty_classes.tolist() == [0]


# --- pixel metrics -----------------------------------------------------------------------------------------


def test_dice_per_class_exact_and_nan_when_absent():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 1, 0]])
    dice = dice_per_class(pred, gt)
    assert dice[0] == pytest.approx(2 * 2 / (3 + 4))  # pred 3 px, gt 4 px, overlap 2
    assert dice[1] == pytest.approx(2 * 3 / (5 + 4))  # pred 5 px, gt 4 px, overlap 3
    assert math.isnan(dice[2]) and math.isnan(dice[3])
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(pred, gt[:, :3])


# --- matching and type F1 ----------------------------------------------------------------------------------


def test_match_centroids_is_optimal_not_greedy():
    # Greedy nearest-first would pair pred 0 with gt 0 (distance 1) and leave gt 1 out of reach.
    pred = np.array([[0.0, 5.0], [0.0, 15.5]])
    gt = np.array([[0.0, 6.0], [0.0, 0.0]])
    pairs, unmatched_pred, unmatched_gt = match_centroids(pred, gt, radius=10)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 0)]
    assert unmatched_pred.size == 0 and unmatched_gt.size == 0
    pairs, unmatched_pred, unmatched_gt = match_centroids(pred, gt, radius=5.5)
    assert pairs.tolist() == [[0, 1]] and unmatched_pred.tolist() == [1] and unmatched_gt.tolist() == [0]
    pairs, up, ug = match_centroids(np.zeros((0, 2)), gt, radius=5)
    assert pairs.shape == (0, 2) and up.size == 0 and ug.tolist() == [0, 1]


def test_type_f1_matches_hovernet_formula():
    paired_pred = np.array([1, 1, 2, 2, 1])
    paired_gt = np.array([1, 2, 2, 1, 1])
    unpaired_pred = np.array([1, 2])
    unpaired_gt = np.array([1, 1, 2])
    # class 1: TP = 2, FP = 1 (gt 2 -> pred 1), FN = 1 (gt 1 -> pred 2), TN = 0, FP_d = 1, FN_d = 2
    assert type_f1(paired_pred, paired_gt, unpaired_pred, unpaired_gt, 1) == pytest.approx(4 / (4 + 2 + 2 + 1 + 2))
    # class 2: TP = 1, FP = 1, FN = 1, FP_d = 1, FN_d = 1
    assert type_f1(paired_pred, paired_gt, unpaired_pred, unpaired_gt, 2) == pytest.approx(2 / (2 + 2 + 2 + 1 + 1))
    # A true cell without a class (0) is ignored among the pairs.
    assert type_f1(np.array([1, 1]), np.array([1, 0]), [], [], 1) == 1.0


# --- SegmentationMetrics -----------------------------------------------------------------------------------


def _scores(pred, gt, gt_inst=None, **kwargs):
    metrics = SegmentationMetrics(**kwargs)
    metrics.update(pred, gt, gt_inst)
    return metrics.compute()


def test_perfect_prediction_scores_one():
    gt, inst = _cells(CENTRES, CLASSES)
    for gt_inst in (None, inst):
        s = _scores(gt, gt, gt_inst)
        assert s["dice"] == [1.0, 1.0, 1.0, 1.0] and s["mean_f1"] == 1.0
        for key in ("detection_f1", "detection_precision", "detection_recall", "type_f1_tumor", "type_f1_non_tumor"):
            assert s[key] == 1.0, key
        assert s["n_true_cells"] == s["n_pred_cells"] == 5


def test_split_rule_is_the_metrics_setting():
    """Two nuclei joined through a 3-px gap in their rings: the default seed rule splits them (both detected); one
    that asks each seed to rise 100 px does not (one cell, which matches one of the two at most)."""
    gt, inst = _cells([(40, 40), (40, 56)], [TUMOR, TUMOR], shape=(80, 100))
    pred = gt.copy()
    pred[39:42, 44:53] = TUMOR  # open both rings where they meet
    split = SegmentationMetrics()
    joined = SegmentationMetrics(split_depth=100.0)
    for m in (split, joined):
        m.update(pred, gt, inst)
    assert split.compute()["n_pred_cells"] == 2 and split.compute()["detection_recall"] == 1.0
    assert joined.compute()["n_pred_cells"] == 1 and joined.compute()["detection_recall"] < 1.0


def test_small_shift_keeps_detection_but_lowers_dice():
    gt, inst = _cells(CENTRES, CLASSES)
    s = _scores(_shift(gt, 3, 2), gt, inst)
    assert s["detection_f1"] == 1.0 and s["type_f1_tumor"] == 1.0 and s["type_f1_non_tumor"] == 1.0
    assert all(d < 1.0 for d in s["dice"][1:]) and s["mean_f1"] < 1.0


def test_shift_beyond_radius_detects_nothing():
    gt, inst = _cells(CENTRES, CLASSES)
    s = _scores(_shift(gt, 13, 0), gt, inst)  # 13 px > 12 px radius
    assert s["detection_f1"] == 0.0 and s["detection_precision"] == 0.0 and s["detection_recall"] == 0.0
    assert s["type_f1_tumor"] == 0.0 and s["type_f1_non_tumor"] == 0.0
    assert _scores(_shift(gt, 13, 0), gt, inst, match_radius=14)["detection_f1"] == 1.0


def test_swapped_classes_detect_everything_type_nothing():
    gt, inst = _cells(CENTRES, CLASSES)
    swapped = gt.copy()
    swapped[gt == TUMOR], swapped[gt == NON_TUMOR] = NON_TUMOR, TUMOR
    s = _scores(swapped, gt)
    assert s["detection_f1"] == 1.0
    assert s["type_f1_tumor"] == 0.0 and s["type_f1_non_tumor"] == 0.0
    assert s["dice"][1] == 0.0 and s["dice"][2] == 0.0 and s["dice"][3] == 1.0


def test_missed_and_extra_cells_pool_over_images():
    gt, inst = _cells(CENTRES, CLASSES)
    fewer, _ = _cells(CENTRES[:3], CLASSES[:3])  # misses cells 4 (tumor) and 5 (non-tumor)
    extra, _ = _cells([*CENTRES, (140, 140)], [*CLASSES, TUMOR])  # one false tumor cell
    metrics = SegmentationMetrics()
    metrics.update(fewer, gt, inst)
    metrics.update(extra, gt, inst)
    s = metrics.compute()
    tp, fp, fn = 3 + 5, 1, 2
    assert s["detection_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["detection_precision"] == pytest.approx(tp / (tp + fp))
    assert s["detection_recall"] == pytest.approx(tp / (tp + fn))
    # tumor: 2 + 3 paired correctly, FP_d = 1 (extra), FN_d = 1 (missed cell 4)
    assert s["type_f1_tumor"] == pytest.approx(10 / (10 + 1 + 1))
    # non-tumor: 1 + 2 paired correctly, FN_d = 1 (missed cell 5)
    assert s["type_f1_non_tumor"] == pytest.approx(6 / (6 + 1))
    assert s["n_true_cells"] == 10 and s["n_pred_cells"] == 9


def test_gt_instances_take_majority_class_and_renumber():
    gt, inst = _cells(CENTRES, CLASSES)
    sparse_ids = np.where(inst > 0, inst * 100 + 7, 0)  # ids need not be 1..N
    s = _scores(gt, gt, sparse_ids)
    assert s["n_true_cells"] == 5 and s["type_f1_tumor"] == 1.0 and s["type_f1_non_tumor"] == 1.0


def test_empty_images_give_nan_not_errors():
    empty = np.zeros((16, 16), np.uint8)
    s = _scores(empty, empty)
    assert s["dice"][0] == 1.0 and all(math.isnan(d) for d in s["dice"][1:])
    assert math.isnan(s["mean_f1"]) and math.isnan(s["detection_f1"]) and math.isnan(s["type_f1_tumor"])
    assert s["n_true_cells"] == 0


def test_renumber_instances_keeps_background_and_order():
    inst = np.array([[0, 7, 7], [3, 0, 9]])
    np.testing.assert_array_equal(renumber_instances(inst), [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(renumber_instances(np.array([[5, 8]])), [[1, 2]])  # no background: ids from 1


def test_instance_centroids():
    inst = np.zeros((5, 5), np.int32)
    inst[0:2, 0:2] = 1
    inst[4, 1:4] = 3
    centroids = instance_centroids(inst)
    assert centroids[0].tolist() == [0.5, 0.5] and centroids[2].tolist() == [4.0, 2.0]
    assert np.isnan(centroids[1]).all()


@pytest.mark.slow
def test_consep_val_ground_truth_against_itself(consep_dir):
    from napari_histoseg.training.pair_folders import find_pairs
    from napari_histoseg.training.samples import load_pairs

    samples, _ = load_pairs(find_pairs(consep_dir / "val"))
    from_labels, from_inst = SegmentationMetrics(), SegmentationMetrics()
    for sample in samples:
        from_labels.update(sample.labels, sample.labels)
        from_inst.update(sample.labels, sample.labels, sample.inst)
    s = from_labels.compute()
    assert s["detection_f1"] == 1.0 and s["mean_f1"] == 1.0 and s["n_true_cells"] > 2800
    # Against the instance maps, a perfect class map still merges touching nuclei and loses nuclei drawn
    # only as boundary or smaller than the smallest cell kept (small lymphocytes among them): the ceiling is
    # high but below 1 (detection F1 0.944 with the default cell rules; 0.928 without the smaller limit at the edge).
    t = from_inst.compute()
    assert 0.935 < t["detection_f1"] < 1.0 and t["type_f1_tumor"] > 0.95 and t["type_f1_non_tumor"] > 0.935
