"""The stain normalisation transform in torch, on the inference device (statistics: ``analysis/stain_stats.py``)."""

from __future__ import annotations

import torch

from ..analysis.stain_stats import LabStats

#: The transform fades out between these lightnesses, so glass stays white and pale tissue is not tinted.
_FADE_LO, _FADE_HI = 85.0, 95.0

# sRGB (D65) <-> CIE XYZ, and the D65 2-degree white point, as in scikit-image.
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ.double()).float()
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (..., 3, H, W) to CIELAB (D65), as ``skimage.color.rgb2lab``."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB_TO_XYZ.to(rgb), linear)
    t = xyz / _WHITE.to(rgb).view(3, 1, 1)
    f = torch.where(t > _DELTA**3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) (..., 3, H, W) to sRGB clipped to [0, 1], as ``skimage.color.lab2rgb``."""
    big_l, a, b = lab.unbind(-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    t = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = t.clamp_min(0) * _WHITE.to(lab).view(3, 1, 1)
    linear = torch.einsum("ij,...jhw->...ihw", _XYZ_TO_RGB.to(lab), xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


class ReinhardNormalizer:
    """Maps images with LAB statistics ``source`` to ``target``: (x - mean_s) / std_s * std_t + mean_t per channel.

    Called on float RGB tensors in [0, 1] shaped (3, H, W) or (N, 3, H, W), on any device. Near-white pixels
    (glass) fade out of the transform between L 85 and 95.
    """

    def __init__(self, source: LabStats, target: LabStats):
        self.source = source
        self.target = target
        scale = torch.tensor(target.std, dtype=torch.float64) / torch.tensor(source.std, dtype=torch.float64)
        self._scale = scale.float()
        self._shift = (torch.tensor(target.mean, dtype=torch.float64) - scale * torch.tensor(source.mean)).float()

    def to_dict(self) -> dict:
        """``{"source": ..., "target": ...}`` as :meth:`LabStats.to_dict` (what results record)."""
        return {"source": self.source.to_dict(), "target": self.target.to_dict()}

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(rgb.float())
        moved = lab * self._scale.to(lab).view(3, 1, 1) + self._shift.to(lab).view(3, 1, 1)
        keep = ((lab[..., :1, :, :] - _FADE_LO) / (_FADE_HI - _FADE_LO)).clamp(0, 1)
        return lab_to_rgb(moved + keep * (lab - moved)).to(rgb.dtype)


def normalizer_for(source: LabStats | None, target: LabStats | None) -> ReinhardNormalizer | None:
    """The normaliser from ``source`` to ``target``; ``None`` (no change) when either is unknown."""
    if source is None or target is None:
        return None
    return ReinhardNormalizer(source, target)
