"""Segment what the viewer shows of a slide: the view rounded out to whole network tiles, read from the pyramid
level the model's resolution picks, segmented in memory (no store), returned with where it lies on the slide.

A slide's store is written and resumed in whole blocks (2048 px by default), so segmenting the view into the store
computes every block the view touches, often 4x the visible area. A view run computes the tiles under the view only;
its labels are a crop of the slide's label grid (the chosen level), placed by :class:`ViewPlan`. Views too large to
hold in memory go through the store, in blocks, as before (:func:`plan_view` says which).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.infer import InferenceSettings
from ..engine.resolution import plan_resolution
from .progress import Job, of_inference, relay

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)

#: Largest view segmented in memory, in compute pixels (the model's resolution): about 1,000 tiles of 256 px.
MAX_VIEW_COMPUTE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ViewPlan:
    """Where a view run reads and writes: ``box`` in pixels of pyramid ``level`` (rounded out to tiles of ``tile``
    level px), ``downsample`` level-0 px per level px, ``factor`` compute px per level px."""

    level: int
    downsample: float
    factor: float
    tile: float
    box: Box
    output_mpp: float | None

    @property
    def level0_box(self) -> Box:
        """The box in level-0 pixels."""
        return tuple(int(round(v * self.downsample)) for v in self.box)

    @property
    def compute_pixels(self) -> float:
        y0, x0, y1, x1 = self.box
        return (y1 - y0) * (x1 - x0) * self.factor**2

    @property
    def fits(self) -> bool:
        """Whether the view is small enough to segment in memory."""
        return self.compute_pixels <= MAX_VIEW_COMPUTE_PIXELS


def plan_view(
    box: Box,
    level_shapes: Sequence[tuple[int, int]],
    level_mpps: Sequence[float | None],
    model_mpp: float | None,
    tile: int,
    input_mpp: float | None = None,
) -> ViewPlan:
    """The level and tile-rounded box a view run of the level-0 ``box`` computes (the engine's level choice)."""
    plan = plan_resolution(level_mpps, model_mpp, input_mpp=input_mpp)
    shape = level_shapes[plan.level]
    downsample = level_shapes[0][0] / shape[0]
    step = tile / plan.factor  # level px per network tile
    y0, x0 = (math.floor(v / downsample / step) * step for v in box[:2])
    y1, x1 = (math.ceil(v / downsample / step) * step for v in box[2:])
    rounded = (int(y0), int(x0), int(min(shape[0], math.ceil(y1))), int(min(shape[1], math.ceil(x1))))
    return ViewPlan(plan.level, downsample, plan.factor, step, rounded, plan.output_mpp)


def view_plan_of_slide(slide, box: Box, model_mpp: float | None, tile: int, mpp: float | None) -> ViewPlan:
    """:func:`plan_view` for an open :class:`~napari_histoseg.io.slide.Slide`."""
    shapes = [(int(level.shape[0]), int(level.shape[1])) for level in slide.levels]
    return plan_view(box, shapes, slide.mpp, model_mpp, tile, input_mpp=mpp)


@dataclass
class ViewOutcome:
    """A finished view run: its plan (where the labels lie) and the labels (a crop of the level's grid)."""

    plan: ViewPlan
    labels: np.ndarray
    summary: dict | None


def segment_view_job(
    slide_path: Path,
    box: Box,
    model,
    card,
    settings: InferenceSettings,
    *,
    mpp: float | None = None,
) -> Job[ViewOutcome]:
    """Segment the level-0 ``box`` of a slide in memory, rounded out to whole tiles; yields progress, returns a
    :class:`ViewOutcome`. Colours are normalised from the whole slide's, as a slide run's blocks are."""
    from ..analysis.tissue import image_stain_stats, slide_thumbnail
    from ..engine.jobs import SegmentationError, normalizes_stain, segment_image
    from ..io.slide import open_slide

    with open_slide(slide_path) as slide:
        plan = view_plan_of_slide(slide, box, card.mpp, settings.tile, mpp)
        if not plan.fits:
            raise SegmentationError(
                f"{slide_path.name}: the view is too large to segment in memory "
                f"({plan.compute_pixels / 1e6:,.0f} M px at the model's resolution); zoom in or segment the whole image"
            )
        y0, x0, y1, x1 = plan.box
        crop = np.asarray(slide.levels[plan.level][y0:y1, x0:x1])
        stain = image_stain_stats(slide_thumbnail(slide)[0]) if normalizes_stain(card, settings) else None
    job = segment_image(crop, model, card, settings, mpp=plan.output_mpp, name=slide_path.name, stain_source=stain)
    result = yield from relay(job, of_inference)
    return ViewOutcome(plan, result.labels, result.summary())
