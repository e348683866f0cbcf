"""Partial targets from a teacher's cells and points, and the loss that reads them, on small synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.draw import disk

from napari_histoseg.classes import BACKGROUND, BOUNDARY, NON_TUMOR, TUMOR
from napari_histoseg.training.loss import weighted_cross_entropy
from napari_histoseg.training.point_targets import CELL_ANY, IGNORE, hematoxylin_mask, point_targets


def teacher_map() -> np.ndarray:
    """Three teacher cells typed non-tumor at (20, 20), (20, 60) and (60, 20), a ring of boundary around each."""
    labels = np.zeros((80, 80), np.uint8)
    for centre in ((20, 20), (20, 60), (60, 20)):
        labels[disk(centre, 8, shape=labels.shape)] = BOUNDARY
        labels[disk(centre, 6, shape=labels.shape)] = NON_TUMOR
    return labels


def test_points_type_the_teacher_cells_and_unpointed_cells_stay_untyped():
    teacher = teacher_map()
    points = np.array([[20.0, 21.0], [60.0, 20.0]])
    target = point_targets(teacher, points, np.array([True, False]), mpp=0.25)
    assert (target[disk((20, 20), 5)] == TUMOR).all()  # the teacher said non-tumor; the point says tumor
    assert (target[disk((60, 20), 5)] == NON_TUMOR).all()
    assert (target[disk((20, 60), 5)] == CELL_ANY).all()  # no point: a cell of either type
    assert target[20, 67] == BOUNDARY  # the teacher's boundary ring is kept
    assert target[75, 75] == BACKGROUND


def test_a_point_the_teacher_missed_gets_a_disk_and_ignored_surroundings():
    teacher = teacher_map()
    target = point_targets(teacher, np.array([[60.0, 60.0]]), np.array([True]), mpp=0.25)
    assert target[60, 60] == TUMOR and target[60, 64] == TUMOR  # 1.5 um = 6 px disk
    assert target[60, 70] == IGNORE  # within 4 um = 16 px, the teacher's background is not trusted
    assert target[60, 79] == BACKGROUND
    # Sizes follow the resolution: at 0.5 um/px the disk is 3 px.
    coarse = point_targets(teacher, np.array([[60.0, 60.0]]), np.array([True]), mpp=0.5)
    assert coarse[60, 63] == TUMOR and coarse[60, 65] == IGNORE


def test_conflicting_points_leave_a_cell_untyped_and_nuclear_background_is_ignored():
    teacher = teacher_map()
    points = np.array([[17.0, 20.0], [23.0, 20.0]])
    target = point_targets(teacher, points, np.array([True, False]), mpp=0.5)  # disks of 3 px
    assert target[20, 15] == CELL_ANY  # away from the two point disks, the cell's type is unknown
    assert target[17, 20] == TUMOR and target[23, 20] == NON_TUMOR
    nuclear = np.zeros_like(teacher, dtype=bool)
    nuclear[70:, 70:] = True
    target = point_targets(teacher, np.zeros((0, 2)), np.zeros(0, bool), mpp=0.25, nuclear=nuclear)
    assert (target[70:, 70:] == IGNORE).all() and target[75, 50] == BACKGROUND


def test_hematoxylin_mask_finds_purple_nuclei_on_pink_tissue():
    image = np.full((40, 40, 3), (235, 190, 215), np.uint8)
    image[disk((20, 20), 6)] = (90, 40, 130)
    mask = hematoxylin_mask(image)
    assert mask[20, 20] and not mask[2, 2]
    assert not hematoxylin_mask(np.full((8, 8, 3), 200, np.uint8)).any()


def test_loss_equals_plain_weighted_cross_entropy_on_full_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    weights = torch.tensor([1.0, 5.0, 4.0, 3.0])
    plain = F.cross_entropy(logits, labels, weight=weights)
    labels_with_ignored = labels.clone()
    labels_with_ignored[0, 0, 0] = IGNORE  # forces the partial path
    partial = weighted_cross_entropy(logits, labels_with_ignored, weights)
    keep = torch.ones_like(labels, dtype=torch.bool)
    keep[0, 0, 0] = False
    pixel = F.cross_entropy(logits, labels, reduction="none")
    expected = (pixel * weights[labels])[keep].sum() / weights[labels][keep].sum()
    assert float(partial) == pytest.approx(float(expected), rel=1e-5)
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(float(plain), rel=1e-6)


def test_cell_any_costs_the_log_of_both_cell_classes_and_does_not_care_which():
    weights = torch.ones(4)
    labels = torch.full((1, 1, 1), CELL_ANY)
    tumor_sure = torch.tensor([0.0, 9.0, 0.0, 0.0]).view(1, 4, 1, 1)
    other_sure = torch.tensor([0.0, 0.0, 9.0, 0.0]).view(1, 4, 1, 1)
    background_sure = torch.tensor([9.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    a, b = weighted_cross_entropy(tumor_sure, labels, weights), weighted_cross_entropy(other_sure, labels, weights)
    assert float(a) == pytest.approx(float(b)) and float(a) < 0.01
    assert float(weighted_cross_entropy(background_sure, labels, weights)) > 8
    # Gradient pushes towards the cell classes together, not one of them.
    logits = torch.zeros(1, 4, 1, 1, requires_grad=True)
    weighted_cross_entropy(logits, labels, weights).backward()
    g = logits.grad.view(4)
    assert g[1] == pytest.approx(float(g[2])) and g[1] < 0 < g[0]


def test_all_ignored_batch_gives_zero_loss_with_a_graph():
    logits = torch.randn(1, 4, 4, 4, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.full((1, 4, 4), IGNORE), torch.ones(4))
    assert float(loss) == 0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0
