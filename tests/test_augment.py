"""Augmentation: image and labels move together, seeded randomness, stain jitter changes colour only."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoseg.classes import CLASS_COLORS
from napari_histoseg.training.augment import augment, jitter_stains


def _blocky(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels made of 8x8 blocks, and an image whose colour is the class colour (so alignment is checkable)."""
    coarse = np.random.default_rng(seed).integers(0, 4, (size // 8, size // 8)).astype(np.uint8)
    labels = np.kron(coarse, np.ones((8, 8), np.uint8))
    return CLASS_COLORS[labels].copy(), labels


def _class_of_colour(image: np.ndarray) -> np.ndarray:
    distance = np.abs(image[..., None, :].astype(int) - CLASS_COLORS.astype(int)).sum(-1)
    return distance.argmin(-1)


def test_dihedral_only_keeps_exact_alignment_and_covers_all_eight():
    image, labels = _blocky()
    seen = set()
    for seed in range(64):
        out_image, out_labels = augment(image, labels, np.random.default_rng(seed), small_rotation_deg=0, max_shift=0)
        assert np.array_equal(out_image, CLASS_COLORS[out_labels])
        assert sorted(np.bincount(out_labels.ravel(), minlength=4)) == sorted(np.bincount(labels.ravel(), minlength=4))
        seen.add(out_labels.tobytes())
    assert len(seen) == 8  # 4 rotations x 2 mirror images


def test_rotation_and_shift_move_image_and_labels_together():
    image, labels = _blocky(seed=1)
    for seed in range(5):
        out_image, out_labels = augment(image, labels, np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_labels.shape == labels.shape
        assert out_labels.dtype == np.uint8 and set(np.unique(out_labels)) <= {0, 1, 2, 3}
        # Bilinear blending only disagrees with nearest labels along block edges.
        assert (_class_of_colour(out_image) == out_labels).mean() > 0.9


def test_shift_only_translates_the_content():
    image, labels = _blocky(seed=2)
    rng = np.random.default_rng(0)
    out_image, out_labels = augment(image, labels, rng, small_rotation_deg=0, max_shift=5)
    # Undo the dihedral part by searching the 8 transforms for the shifted copy.
    matched = False
    for k in range(4):
        for flip in (False, True):
            ref = np.rot90(labels, k)
            ref = ref[:, ::-1] if flip else ref
            for dy in range(-5, 6):
                for dx in range(-5, 6):
                    window = np.roll(ref, (dy, dx), axis=(0, 1))[8:-8, 8:-8]
                    if np.array_equal(window, out_labels[8:-8, 8:-8]):
                        matched = True
    assert matched
    assert np.array_equal(out_image, CLASS_COLORS[out_labels])  # integer shift: no blending


def test_same_seed_same_result_inputs_untouched():
    image, labels = _blocky(seed=3)
    before = image.copy(), labels.copy()
    a = augment(image, labels, np.random.default_rng(7), stain_jitter=0.05)
    b = augment(image, labels, np.random.default_rng(7), stain_jitter=0.05)
    c = augment(image, labels, np.random.default_rng(8), stain_jitter=0.05)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(image, before[0]) and np.array_equal(labels, before[1])
    assert a[0].flags.c_contiguous and a[1].flags.c_contiguous


def test_stain_jitter_changes_colour_not_geometry():
    rng = np.random.default_rng(0)
    # An H&E-like image: pink/purple pixels on white.
    image = np.full((32, 32, 3), 235, np.uint8)
    image[8:24, 8:24] = [120, 60, 160]
    image[0:8, 0:8] = [220, 140, 190]
    jittered = jitter_stains(image, 0.05, rng)
    assert jittered.dtype == np.uint8 and jittered.shape == image.shape
    assert not np.array_equal(jittered, image)
    # Regions stay uniform (colour change per stain, not per pixel) and the change is moderate.
    assert len(np.unique(jittered[8:24, 8:24].reshape(-1, 3), axis=0)) == 1
    assert np.abs(jittered.astype(int) - image).max() < 60
    # Through augment, labels are unaffected by the jitter.
    _, labels = _blocky(32)
    a = augment(image, labels, np.random.default_rng(1), stain_jitter=0.05)
    b = augment(image, labels, np.random.default_rng(1), stain_jitter=0.0)
    assert np.array_equal(a[1], b[1])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="must be"):
        augment(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), np.random.default_rng(0))
