"""Stain normalisation (Reinhard et al. 2001): match a slide's colours to those the model was trained on.

H&E colours vary a lot between labs and scanners; a network trained on one lab's slides can miss most nuclei on
another's (on the CMU-1 sample an earlier bundled model found 91 cells without this, none tumor; 1,875 with it, 432
tumor). Reinhard's method shifts and scales each CIELAB channel of the tissue so its mean and standard deviation
match the training data's. The statistics of a slide come from its low-resolution level once, so every tile of a
slide gets the same colour transform (per-tile statistics would change with what each tile holds and leave seams).

Statistics are computed here with scikit-image's ``rgb2lab`` (no torch: the tissue code uses them); the
per-pixel transform of whole blocks runs in torch on the inference device
(:class:`napari_histoseg.engine.stain_transform.ReinhardNormalizer`), with the same sRGB / D65 formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2lab

#: Pixels with CIELAB lightness above this are glass (or empty padding), not stain: left out of the statistics.
GLASS_L = 88.0
#: Fewer tissue pixels than this give statistics too noisy to trust: no normalisation then.
MIN_TISSUE_PIXELS = 1000
#: At most this many pixels are converted to compute statistics (a strided sample of the rest).
_MAX_STATS_PIXELS = 4_000_000


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of the L, a and b channels of a set of tissue pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"LAB {name} must be three finite numbers, got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"LAB std must be positive, got {self.std!r}")

    def to_dict(self) -> dict:
        return {"method": "reinhard", "lab_mean": list(self.mean), "lab_std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> LabStats:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on anything else."""
        if not isinstance(d, dict) or d.get("method") != "reinhard" or not {"lab_mean", "lab_std"} <= set(d):
            raise ValueError(f"stain statistics must be {{'method': 'reinhard', 'lab_mean', 'lab_std'}}, got {d!r}")
        return cls(tuple(float(v) for v in d["lab_mean"]), tuple(float(v) for v in d["lab_std"]))


def _sample(rgb: np.ndarray, mask: np.ndarray | None, budget: int) -> np.ndarray:
    """Up to ``budget`` pixels (n, 3) of an (H, W, 3) image, strided evenly; only where ``mask`` is set."""
    step = max(1, math.ceil(math.sqrt(rgb.shape[0] * rgb.shape[1] / budget)))
    pixels = np.asarray(rgb[::step, ::step, :3])
    if mask is not None:
        return pixels[np.asarray(mask)[::step, ::step]]
    return pixels.reshape(-1, 3)


def lab_stats(
    images: np.ndarray | Iterable[np.ndarray],
    masks: Iterable[np.ndarray] | None = None,
    *,
    count: int | None = None,
) -> LabStats | None:
    """Pooled LAB statistics of the tissue pixels of one (H, W, 3) uint8 image or several.

    Tissue is every pixel darker than :data:`GLASS_L` (and inside ``masks``, one bool mask per image, when
    given). Returns ``None`` when fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels are found. With ``count``
    (the number of images), ``images`` may be a stream read one at a time: only a strided sample of each is kept.
    """
    if isinstance(images, np.ndarray):
        images = [images]
        masks = None if masks is None else [masks]
    if count is None or masks is not None:
        images = list(images)
        count = len(images)
    masks = [None] * count if masks is None else list(masks)
    if len(masks) != count:
        raise ValueError(f"{count} images but {len(masks)} masks")
    budget = max(1, _MAX_STATS_PIXELS // max(1, count))
    labs = []
    for rgb, mask in zip(images, masks, strict=False):
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
        pixels = _sample(rgb, mask, budget)
        if len(pixels):
            lab = rgb2lab(pixels[None].astype(np.uint8))[0]
            labs.append(lab[lab[:, 0] < GLASS_L])
    lab = np.concatenate(labs) if labs else np.zeros((0, 3))
    if len(lab) < MIN_TISSUE_PIXELS:
        return None
    std = lab.std(axis=0)
    if min(std) <= 0:
        return None
    return LabStats(tuple(float(v) for v in lab.mean(axis=0)), tuple(float(v) for v in std))
