"""Run the model at the resolution it was trained at: choose a pyramid level and a resampling factor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_FACTOR_LOG2 = 2  # resample by at most 4x either way


@dataclass(frozen=True)
class ResolutionPlan:
    """Which level the output grid is, and how many compute pixels the model sees per output pixel."""

    level: int
    factor: float  # a power of two: 2 means the level is upsampled 2x before the model sees it
    output_mpp: float | None
    warning: str | None = None


def plan_resolution(
    level_mpps: Sequence[float | None],
    model_mpp: float | None,
    *,
    level: int | None = None,
    input_mpp: float | None = None,
) -> ResolutionPlan:
    """Pick the level closest to the model's microns per pixel and the power-of-two factor that bridges the rest.

    ``level`` forces a level; ``input_mpp`` overrides the level-0 resolution the file states (or lacks).
    Without any resolution (file or model), the chosen level is used as it is, with a warning.
    """
    n = len(level_mpps)
    if input_mpp is not None and not (math.isfinite(input_mpp) and input_mpp > 0):
        raise ValueError(f"the input resolution must be a positive number of microns per pixel, got {input_mpp}")
    if level is not None and not 0 <= level < n:
        raise ValueError(f"level {level} does not exist: the image has levels 0..{n - 1}")
    mpps = list(level_mpps)
    if input_mpp is not None:
        base = level_mpps[0]
        ratios = [(m / base) if (m and base) else float(2**k) for k, m in enumerate(mpps)]
        mpps = [input_mpp * r for r in ratios]
    if model_mpp is None:
        return ResolutionPlan(level or 0, 1.0, mpps[level or 0], None)
    if level is None:
        known = [(abs(math.log2(m / model_mpp)), k) for k, m in enumerate(mpps) if m]
        if not known:
            return ResolutionPlan(
                0,
                1.0,
                None,
                f"the image states no microns per pixel; it is segmented as if at the model's {model_mpp:g} um/px "
                "(set the input resolution if that is wrong)",
            )
        level = min(known)[1]
    mpp = mpps[level]
    if not mpp:
        return ResolutionPlan(level, 1.0, None, f"level {level} has no known microns per pixel; used as it is")
    log2 = int(round(math.log2(mpp / model_mpp)))
    log2 = max(-MAX_FACTOR_LOG2, min(MAX_FACTOR_LOG2, log2))
    return ResolutionPlan(level, float(2.0**log2), mpp)


def to_compute(region: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample an image region (3, h, w) from the output grid to the compute grid."""
    if factor > 1:
        return F.interpolate(region[None], scale_factor=factor, mode="bilinear", align_corners=False)[0]
    if factor < 1:
        return F.avg_pool2d(region[None], kernel_size=int(round(1 / factor)))[0]
    return region


def rgb_to_compute(image: np.ndarray, factor: float) -> np.ndarray:
    """An (H, W, 3) uint8 image resampled to the compute grid as :func:`to_compute` does, back as uint8."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    out = to_compute(pixels, factor).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out)


def to_output(scores: torch.Tensor, factor: float) -> torch.Tensor:
    """Bring blended class scores (C, h, w) from the compute grid back to the output grid."""
    if factor > 1:
        return F.avg_pool2d(scores[None], kernel_size=int(factor))[0]
    if factor < 1:
        k = int(round(1 / factor))
        return scores.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
    return scores


def compute_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Size of the compute grid for an output grid of ``shape``."""
    return int(math.ceil(shape[0] * factor)), int(math.ceil(shape[1] * factor))


def read_padded(array, y0: int, x0: int, y1: int, x1: int, fill: int = 255) -> np.ndarray:
    """Read ``array[y0:y1, x0:x1]`` (numpy, zarr or dask; (H, W, 3)), padding outside the image with ``fill``."""
    h, w = array.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), fill, dtype=np.uint8)
    iy0, ix0, iy1, ix1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if iy0 < iy1 and ix0 < ix1:
        part = array[iy0:iy1, ix0:ix1]
        # An explicit local scheduler: on a dask.distributed worker the default would ship the graph (and its
        # open file handle) to the cluster.
        part = np.asarray(part.compute(scheduler="threads") if hasattr(part, "compute") else part)
        out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = part[..., :3]
    return out
