"""Augmentation of an image and its class labels: dihedral steps, a small rotation with a shift, stain jitter.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seeded generator gives the same
result on any machine and in any worker process.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _dihedral(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    k = int(rng.integers(4))
    flip_h, flip_v = rng.random(2) < 0.5
    image, labels = np.rot90(image, k, axes=(0, 1)), np.rot90(labels, k, axes=(0, 1))
    if flip_h:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if flip_v:
        image, labels = image[::-1], labels[::-1]
    return image, labels


def _rotate_shift(
    image: np.ndarray, labels: np.ndarray, angle_deg: float, shift: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the centre by ``angle_deg``, shift by ``shift`` (rows, cols) px; reflect at edges."""
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # affine_transform maps each output coordinate o to the input coordinate matrix @ o + offset.
    matrix = np.array([[cos, -sin], [sin, cos]])
    centre = (np.array(labels.shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift, dtype=np.float64))
    out_image = np.empty_like(image)
    for channel in range(image.shape[2]):
        ndi.affine_transform(
            image[..., channel], matrix, offset, output=out_image[..., channel], order=1, mode="reflect"
        )
    out_labels = ndi.affine_transform(labels, matrix, offset, order=0, mode="reflect")
    return out_image, out_labels


def jitter_stains(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """H&E colour augmentation (Tellez et al. 2018): in HED space, each stain s becomes a * s + b.

    ``a`` is drawn from U(1 - sigma, 1 + sigma) and ``b`` from U(-sigma, sigma) * (the stain's range over the
    image, at least 0.05), so ``sigma`` is a relative strength; 0.02-0.05 gives plausible lab-to-lab
    variation.
    """
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3)
    spread = np.maximum(hed.reshape(-1, 3).max(axis=0) - hed.reshape(-1, 3).min(axis=0), 0.05)
    beta = rng.uniform(-sigma, sigma, size=3) * spread
    rgb = hed2rgb(hed * alpha + beta)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    small_rotation_deg: float = 15,
    max_shift: int = 16,
    stain_jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment an image (H, W, 3) uint8 and its labels (H, W) together.

    - one of the 8 dihedral transforms (90-degree rotation ``k`` in 0..3, horizontal and vertical flips);
    - a rotation by U(-small_rotation_deg, small_rotation_deg) degrees plus a shift of up to ``max_shift``
      pixels per axis (image bilinear, labels nearest, reflect fill), skipped when both are 0;
    - with ``stain_jitter`` > 0, H&E stain jitter of that strength (see ``jitter_stains``).

    Returns new contiguous arrays; the inputs are not modified. Square images keep their shape; a non-square
    image may come back transposed (by a 90-degree rotation).
    """
    if image.ndim != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be (H, W, C) and (H, W)")
    image, labels = _dihedral(image, labels, rng)
    angle = rng.uniform(-small_rotation_deg, small_rotation_deg) if small_rotation_deg > 0 else 0.0
    shift = tuple(rng.integers(-max_shift, max_shift + 1, size=2)) if max_shift > 0 else (0, 0)
    if angle != 0.0 or shift != (0, 0):
        image, labels = _rotate_shift(np.ascontiguousarray(image), np.ascontiguousarray(labels), angle, shift)
    if stain_jitter > 0:
        image = jitter_stains(image, stain_jitter, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
