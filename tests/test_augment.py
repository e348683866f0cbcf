"""Augmentation: image and labels move together, seeded randomness, stain jitter changes colour only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histoseg.classes import CLASS_COLORS
from napari_histoseg.training.augment import _rotate_shift, augment, jitter_stains


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


@pytest.mark.parametrize("shape", [(48, 48), (40, 56)])
@pytest.mark.parametrize(("angle", "shift"), [(0.0, (3, -5)), (7.5, (0, 0)), (-13.0, (4, 9))])
def test_rotate_shift_matches_scipy_affine_transform(shape, angle, shift):
    """The torch warp is the map R (o - centre - shift) + centre, as scipy computes it."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    labels = rng.integers(0, 4, shape, dtype=np.uint8)
    theta = np.deg2rad(angle)
    matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift, dtype=np.float64))
    expected = np.stack(
        [ndi.affine_transform(image[..., c], matrix, offset, order=1, mode="reflect") for c in range(3)], axis=-1
    )
    expected_labels = ndi.affine_transform(labels, matrix, offset, order=0, mode="reflect")
    out_image, out_labels = _rotate_shift(image, labels, angle, shift)
    assert out_image.dtype == np.uint8 and out_labels.dtype == np.uint8
    assert np.abs(out_image.astype(int) - expected).max() <= 1
    assert (out_labels != expected_labels).mean() < 0.002  # nearest-neighbour ties may round differently


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


def test_stain_jitter_equals_scikit_image_colour_deconvolution():
    from skimage.color import hed2rgb, rgb2hed

    image = np.random.default_rng(4).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    image[0, 0] = 0  # the darkest pixel exercises the 1e-6 floor of the optical density
    out = jitter_stains(image, 0.05, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    hed = rgb2hed(image)
    alpha = rng.uniform(0.95, 1.05, size=3)
    beta = rng.uniform(-0.05, 0.05, size=3) * np.maximum(np.ptp(hed.reshape(-1, 3), axis=0), 0.05)
    expected = np.clip(np.rint(hed2rgb(hed * alpha + beta) * 255), 0, 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="must be"):
        augment(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), np.random.default_rng(0))
