"""U-Net border weights: the extra loss weight between touching cells, the loss that uses it, the dataset's maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_histoseg.classes import BOUNDARY, NON_TUMOR, TUMOR
from napari_histoseg.training.border_weights import border_weights
from napari_histoseg.training.loss import weighted_cross_entropy
from napari_histoseg.training.patch_datasets import PatchDataset
from napari_histoseg.training.samples import Sample


def _square(labels: np.ndarray, y: int, x: int, size: int, cls: int) -> None:
    """A square nucleus: interior of class ``cls`` inside a 1-px boundary ring."""
    labels[y : y + size, x : x + size] = BOUNDARY
    labels[y + 1 : y + size - 1, x + 1 : x + size - 1] = cls


def test_touching_cells_get_the_weight_isolated_cells_do_not():
    labels = np.zeros((40, 60), np.uint8)
    _square(labels, 5, 5, 8, TUMOR)  # touches the next one: rings side by side at columns 12 and 13
    _square(labels, 5, 13, 8, NON_TUMOR)
    _square(labels, 25, 45, 8, TUMOR)  # 20+ px from the others
    w = border_weights(labels, w0=10, sigma=3)
    assert w.dtype == np.float32 and w.shape == labels.shape
    # A ring pixel of the left cell next to the right one: d1 = 0, d2 = 1.
    assert w[8, 12] == pytest.approx(10 * math.exp(-1 / 18), rel=1e-5)
    assert w[8, 13] == pytest.approx(w[8, 12])
    # The isolated cell is farther than 3 sigma from any other cell: no weight anywhere near it.
    assert w[22:40, 40:60].max() < 1e-6
    # Far from the pair (but within reach of one cell only) nothing either.
    assert w[0:20, 30:40].max() < 1e-6


def test_gap_between_nearby_cells_weighs_by_its_width():
    labels = np.zeros((20, 40), np.uint8)
    _square(labels, 5, 5, 8, TUMOR)
    _square(labels, 5, 16, 8, TUMOR)  # 3 px of background between them (columns 13-15)
    w = border_weights(labels, w0=10, sigma=5)
    assert w[8, 14] == pytest.approx(10 * math.exp(-((2 + 2) ** 2) / 50), rel=1e-5)  # d1 = d2 = 2
    assert w[8, 13] == pytest.approx(10 * math.exp(-((1 + 3) ** 2) / 50), rel=1e-5)
    assert w[8, 14] > w[0, 14] > 0  # the gap weighs more than the margin beside it


def test_no_cells_or_no_weight_gives_zeros_and_bad_sigma_raises():
    labels = np.zeros((16, 16), np.uint8)
    assert not border_weights(labels, w0=10).any()
    _square(labels, 2, 2, 6, TUMOR)
    _square(labels, 2, 8, 6, TUMOR)
    assert not border_weights(labels, w0=0).any()
    with pytest.raises(ValueError, match="sigma"):
        border_weights(labels, w0=10, sigma=0)


def test_loss_without_border_is_class_weighted_cross_entropy_and_border_shifts_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    weights = torch.tensor([1.0, 10.0, 20.0, 15.0])
    plain = F.cross_entropy(logits, labels, weight=weights)
    assert weighted_cross_entropy(logits, labels, weights) == pytest.approx(float(plain))
    zeros = torch.zeros(2, 8, 8)
    assert weighted_cross_entropy(logits, labels, weights, zeros) == pytest.approx(float(plain), rel=1e-6)
    # All the border weight on the one worst pixel pulls the mean towards its loss.
    losses = F.cross_entropy(logits, labels, reduction="none")
    border = torch.zeros(2, 8, 8)
    worst = int(losses.argmax())
    border.view(-1)[worst] = 1e6
    assert weighted_cross_entropy(logits, labels, weights, border) > plain
    assert weighted_cross_entropy(logits, labels, weights, border) == pytest.approx(float(losses.max()), rel=0.01)


def test_patch_dataset_returns_the_border_map_of_its_augmented_labels():
    labels = np.zeros((48, 48), np.uint8)
    _square(labels, 10, 10, 10, TUMOR)
    _square(labels, 10, 20, 10, NON_TUMOR)
    image = np.full((48, 48, 3), 200, np.uint8)
    samples = [Sample("pair", image, labels, None)]
    plain = PatchDataset(samples, patch=32, seed=1)
    weighted = PatchDataset(samples, patch=32, seed=1, border_weight=10, border_sigma=4)
    assert len(plain[0]) == 2
    image_t, labels_t, border = weighted[0]
    assert torch.equal(image_t, plain[0][0]) and torch.equal(labels_t, plain[0][1])  # same patch, same draw
    assert border.shape == (32, 32) and border.dtype == torch.float32
    expected = border_weights(labels_t.numpy().astype(np.uint8), 10, 4)
    assert np.allclose(border.numpy(), expected)
    assert float(border.max()) > 5  # the two cells touch in every patch that holds both
