"""Estimate an image's resolution (microns per pixel) from the image.

A slide that states no resolution would be segmented at the wrong scale. :func:`estimate_mpp_job` reads the scale
with the size model (``engine/scale_regressor.py``, a small CNN trained on CoNSeP and BRCA-M2C train images at
random resolutions): the median of its log2(um/px) over 128 px crops of a few tissue tiles, with a confidence from
how far the tiles agree (checked in docs/tuning-log.md, "Resolution estimate").

The earlier estimator, kept as :func:`nucleus_scan_job` for comparison, segments tissue tiles with the bundled
model as if the image were at each of a range of resolutions (about 60x to 10x) and takes the resolution where the
median nucleus area crosses what the model measures on its training images (CoNSeP, 0.25 um/px).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..classes import NON_TUMOR, TUMOR
from .infer import InferenceSettings
from .jobs import segment_image
from .scale_regressor import CROP, ScaleReading, load_scale_model, relative_spread, tile_logs

log = logging.getLogger(__name__)

#: Median nucleus area (um^2) the bundled model finds on CoNSeP train images at 0.25 um/px; smaller than a real
#: nucleus, as the model's cells stop at their boundary ring. Measured by ``scripts/calibrate_mpp_estimate.py
#: --calibrate`` after each retrain (the run that set it: docs/tuning-log.md, "Resolution estimate").
TYPICAL_NUCLEUS_UM2 = 11.7
MIN_NUCLEUS_UM2 = 4.0  # smaller specks are not counted
TILE_MODEL_PX = 384  # side of a measured tile, in pixels at the model's resolution
START_MPP = 0.5  # 20x, the commonest scan (tissue tiles are chosen for it)
SCALES = (0.18, 0.25, 0.35, 0.5, 0.7, 1.0)  # um/px tried: about 60x to 10x
SIZE_TILE_PX = 2 * CROP  # side of a tissue tile the size model reads (4 crops), in image pixels
SIZE_MODEL = "size model"


@dataclass(frozen=True)
class MppEstimate:
    """An estimated resolution with how far to trust it."""

    mpp: float
    confidence: str  # "high", "medium" or "low"
    nuclei: int
    tiles: int
    spread: float  # relative spread (interquartile range / median) of the per-tile estimates
    steps: list[float]  # the resolutions tried (nucleus scan) or each tile's estimate (size model)
    method: str = "nucleus scan"  # or SIZE_MODEL (nuclei is then 0)

    @property
    def text(self) -> str:
        """e.g. "0.49 um/px (confidence high: 412 nuclei on 4 tiles, tiles agree within 6%)"."""
        what = "size model" if self.method == SIZE_MODEL else f"{self.nuclei:,} nuclei"
        return (
            f"{self.mpp:.3g} um/px (confidence {self.confidence}: {what} on {self.tiles} "
            f"tile{'s' if self.tiles != 1 else ''}, "
            f"tiles agree within {100 * self.spread:.0f}%)"
        )


@dataclass(frozen=True)
class EstimateProgress:
    """One tile measured (``done`` of ``total`` over all scales)."""

    done: int
    total: int


def tissue_tile_centres(image, n: int, tile_px: int, *, seed: int = 0) -> list[tuple[int, int]]:
    """Up to ``n`` level-0 centres of tiles of ``tile_px`` that lie on tissue (spread over the image).

    ``image``: (H, W, 3) array-like (numpy, dask, zarr) at level 0, or a list of pyramid levels (level 0 first);
    the tissue mask is computed on the smallest level (or a strided sample) of at most ~2048 px.
    """
    from ..analysis.tissue import mask_from_rgb

    levels = list(image) if isinstance(image, (list, tuple)) else [image]
    h, w = int(levels[0].shape[0]), int(levels[0].shape[1])
    small = min(levels, key=lambda lv: lv.shape[0] * lv.shape[1])
    step = max(1, int(math.ceil(max(small.shape[:2]) / 2048)))
    thumb = _as_numpy(small[::step, ::step])[..., :3]
    down = h / thumb.shape[0]
    mask = mask_from_rgb(thumb)
    if not mask.any():
        mask = np.ones_like(mask)
    cell = max(1, int(round(tile_px / down)))
    gh, gw = max(1, mask.shape[0] // cell), max(1, mask.shape[1] // cell)
    fractions = mask[: gh * cell, : gw * cell].reshape(gh, cell, gw, cell).mean(axis=(1, 3)) if cell > 1 else None
    if fractions is None or gh * gw <= n:
        ys = np.linspace(tile_px / 2, max(tile_px / 2, h - tile_px / 2), max(1, min(n, 2)))
        xs = np.linspace(tile_px / 2, max(tile_px / 2, w - tile_px / 2), max(1, math.ceil(n / len(ys))))
        return [(int(y), int(x)) for y in ys for x in xs][:n]
    order = np.argsort(-fractions.ravel(), kind="stable")
    good = [i for i in order if fractions.ravel()[i] >= 0.7] or list(order[: max(n, 1)])
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(good, size=min(n, len(good)), replace=False).tolist())
    return [(int((i // gw + 0.5) * cell * down), int((i % gw + 0.5) * cell * down)) for i in picked]


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "compute"):
        array = array.compute(scheduler="threads")
    return np.asarray(array)


def crop_origin(shape, centre: tuple[int, int], size: int) -> tuple[int, int, int]:
    """``(y0, x0, size)`` of the square crop of ``size`` around ``centre``, moved and shrunk to fit the image."""
    h, w = int(shape[0]), int(shape[1])
    size = min(size, h, w)
    return int(np.clip(centre[0] - size // 2, 0, h - size)), int(np.clip(centre[1] - size // 2, 0, w - size)), size


def read_tile(level0, centre: tuple[int, int], size: int) -> np.ndarray:
    """The (size, size, 3) crop around ``centre``, clipped to the image (so possibly smaller)."""
    y0, x0, size = crop_origin(level0.shape, centre, size)
    return _as_numpy(level0[y0 : y0 + size, x0 : x0 + size])[..., :3]


def resample(tile: np.ndarray, factor: float) -> np.ndarray:
    """Resize an (h, w, 3) uint8 tile by ``factor`` (bilinear, antialiased when shrinking)."""
    if abs(factor - 1) < 1e-3:
        return tile
    x = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1)[None].float()
    size = (max(8, int(round(tile.shape[0] * factor))), max(8, int(round(tile.shape[1] * factor))))
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return y[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


def nucleus_areas(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Areas (px) of the cells (tumor or non-tumor connected components) of a label map, specks dropped."""
    cells = (labels == TUMOR) | (labels == NON_TUMOR)
    components, n = ndi.label(cells)
    if not n:
        return np.zeros(0, np.int64)
    areas = np.bincount(components.ravel())[1:]
    return areas[areas >= min_px]


def estimate_mpp_job(
    image,
    *,
    tiles: int = 8,
    size_model: torch.nn.Module | None = None,
    cancel: threading.Event | None = None,
) -> Generator[EstimateProgress, None, MppEstimate]:
    """Generator: yields :class:`EstimateProgress` per tile, returns the :class:`MppEstimate` of ``image``.

    ``image``: level 0 (H, W, 3) array-like or a list of pyramid levels. The size model (the bundled one unless
    ``size_model`` is given) reads up to ``tiles`` tissue tiles of :data:`SIZE_TILE_PX` at the image's own
    resolution; tiles that a small image clips to the same crop count once.
    """
    size_model = size_model if size_model is not None else load_scale_model()
    levels = list(image) if isinstance(image, (list, tuple)) else [image]
    level0 = levels[0]
    tile_px = min(SIZE_TILE_PX, int(level0.shape[0]), int(level0.shape[1]))  # tiles must fit the image
    centres = tissue_tile_centres(levels, tiles, tile_px)
    boxes = {crop_origin(level0.shape, c, tile_px): c for c in centres}
    logs = []
    for k, centre in enumerate(boxes.values()):
        if cancel is not None and cancel.is_set():
            return None
        logs.append(tile_logs(read_tile(level0, centre, tile_px), size_model))
        yield EstimateProgress(k + 1, len(boxes))
    reading = ScaleReading(logs)
    confidence = _size_confidence(len(logs), reading.spread)
    return MppEstimate(reading.mpp, confidence, 0, len(logs), reading.spread, reading.tile_mpps, SIZE_MODEL)


def _size_confidence(tiles: int, spread: float) -> str:
    if tiles >= 4 and spread < 0.15:
        return "high"
    if spread < 0.35:
        return "medium"
    return "low"


def nucleus_scan_job(
    image,
    model: torch.nn.Module,
    card,
    *,
    settings: InferenceSettings | None = None,
    tiles: int = 4,
    scales: Sequence[float] = SCALES,
    typical_um2: float = TYPICAL_NUCLEUS_UM2,
    cancel: threading.Event | None = None,
) -> Generator[EstimateProgress, None, MppEstimate]:
    """Generator: yields :class:`EstimateProgress` per tile, returns the :class:`MppEstimate` of ``image``.

    ``image``: level 0 (H, W, 3) array-like or a list of pyramid levels. ``card.mpp`` is the model's resolution.
    Each tile is segmented as if the image were at each of ``scales`` um/px; the estimate is where the median
    nucleus area crosses ``typical_um2`` (interpolated in log scale; the crossing with the most nuclei when there
    are several), or the scale closest to it when it never crosses (low confidence).
    """
    if not card.mpp:
        raise ValueError("the model card states no resolution (mpp): it cannot measure one")
    settings = settings or InferenceSettings(
        tile=256,
        overlap=0.25,
        opening_radius=2,
        skip_background=False,
        cell_typer=False,  # sizes only
    )
    levels = list(image) if isinstance(image, (list, tuple)) else [image]
    level0 = levels[0]
    centres = tissue_tile_centres(levels, tiles, int(TILE_MODEL_PX * card.mpp / START_MPP * 2))
    min_px = max(4, int(MIN_NUCLEUS_UM2 / card.mpp**2))
    pooled: list[np.ndarray] = []  # per scale: the areas (um^2) of all tiles
    per_tile: dict[int, list[float]] = {}  # per tile: its median area (um^2) at each scale
    done = 0
    total = len(scales) * len(centres)
    for mpp in scales:
        size = int(round(TILE_MODEL_PX * card.mpp / mpp))  # image px that make TILE_MODEL_PX at the model's scale
        boxes = {crop_origin(level0.shape, c, size): c for c in centres}  # a small image: one crop, not four
        found = []
        for k, centre in enumerate(boxes.values()):
            if cancel is not None and cancel.is_set():
                return None
            tile = resample(read_tile(level0, centre, size), mpp / card.mpp)
            *_, result = segment_image(tile, model, card, settings, mpp=card.mpp, name="estimate")
            areas = nucleus_areas(result.labels, min_px) * card.mpp**2
            found.append(areas)
            per_tile.setdefault(k, []).append(float(np.median(areas)) if len(areas) >= 3 else 0.0)
            done += 1
            yield EstimateProgress(done, total)
        pooled.append(np.concatenate(found) if found else np.zeros(0))
    medians = [float(np.median(a)) if len(a) >= 3 else 0.0 for a in pooled]
    counts = [len(a) for a in pooled]
    mpp, crossed = crossing(scales, medians, counts, typical_um2)
    tile_estimates = [crossing(scales, m, counts, typical_um2)[0] for m in per_tile.values() if len(m) == len(scales)]
    spread = relative_spread(tile_estimates)
    nuclei = counts[int(np.argmin([abs(math.log(s / mpp)) for s in scales]))]
    return MppEstimate(mpp, _confidence(crossed, nuclei, spread), nuclei, len(tile_estimates), spread, list(scales))


def crossing(
    scales: Sequence[float], medians: Sequence[float], counts: Sequence[int], typical: float
) -> tuple[float, bool]:
    """Where the median area crosses ``typical`` (log-log interpolation), and whether it did cross."""
    r = [math.log(m / typical) if m > 0 else None for m in medians]
    found = []
    for i in range(len(scales) - 1):
        a, b = r[i], r[i + 1]
        if a is None or b is None or (a != 0 and (a > 0) == (b > 0)):
            continue
        t = a / (a - b) if a != b else 0.0
        log_mpp = math.log(scales[i]) + t * (math.log(scales[i + 1]) - math.log(scales[i]))
        found.append((counts[i] + counts[i + 1], math.exp(log_mpp)))
    if found:
        return max(found)[1], True
    known = [(abs(x), s) for x, s in zip(r, scales, strict=True) if x is not None]
    return (min(known)[1], False) if known else (START_MPP, False)


def _confidence(crossed: bool, nuclei: int, spread: float) -> str:
    if crossed and nuclei >= 100 and spread < 0.15:
        return "high"
    if crossed and nuclei >= 30 and spread < 0.35:
        return "medium"
    return "low"


def estimate_mpp(image, **kwargs) -> MppEstimate:
    """:func:`estimate_mpp_job` run to the end."""
    return run_to_end(estimate_mpp_job(image, **kwargs))


def run_to_end(gen: Generator[EstimateProgress, None, MppEstimate]) -> MppEstimate:
    """The value a job generator returns, its progress dropped."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def auto_mpp(image, *, stated: float | None = None, name: str = "image") -> float:
    """``--mpp auto``: the resolution the file states, or else the size model's estimate from the image (logged
    with its confidence)."""
    if stated:
        log.info("%s: %g um/px, as the file states", name, stated)
        return float(stated)
    estimate = estimate_mpp(image)
    log.warning("%s states no resolution; estimated %s", name, estimate.text)
    return estimate.mpp
