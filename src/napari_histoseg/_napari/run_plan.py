"""What a Segment run will compute, known before it starts: the number of network tiles (for the progress bar)
and the area it covers (said before a "current view" run). No Qt."""

from __future__ import annotations

import contextlib

from napari_histoseg.engine.jobs import SegmentationError, blocks_in_region, tissue_test
from napari_histoseg.engine.resolution import plan_resolution
from napari_histoseg.engine.tile_count import count_tiles


def slide_tiles(slide, card, request) -> int:
    """Tiles the engine will compute for ``request`` (a :class:`~.segment_job.SegmentRequest`) on ``slide``.

    Background is left out as the engine leaves it out (same tissue mask), and so are blocks an earlier run of the
    same store finished (they are resumed).
    """
    from napari_histoseg.analysis.tissue import mask_from_rgb, slide_thumbnail

    settings = request.settings
    plan = plan_resolution(slide.mpp, card.mpp, input_mpp=request.mpp)
    level = slide.levels[plan.level]
    shape = (int(level.shape[0]), int(level.shape[1]))
    downsample = slide.downsample(plan.level)
    tissue = None
    if settings.skip_background:
        thumbnail, thumb_downsample = slide_thumbnail(slide)
        tissue = tissue_test(mask_from_rgb(thumbnail, thumb_downsample), thumb_downsample, downsample)
    blocks = None
    if request.regions:
        blocks = sorted({b for box in request.regions for b in _blocks(box, downsample, shape, settings.block)})
    counts = count_tiles(shape, settings, plan.factor, tissue=tissue, blocks=blocks)
    if request.out is not None:
        from napari_histoseg.io.store import LabelStore, StoreError

        with contextlib.suppress(StoreError, OSError, ValueError):
            for index in LabelStore.open(request.out).done_blocks():
                counts.pop(tuple(index), None)
    return sum(counts.values())


def _blocks(box, downsample: float, shape: tuple[int, int], block: int) -> list[tuple[int, int]]:
    try:
        return blocks_in_region(box, downsample, shape, block)
    except SegmentationError:  # outside the image: nothing to count (the run itself says so)
        return []


def image_tiles(boxes, card, request) -> int:
    """Tiles the engine will compute for the crops ``boxes`` of an in-memory image."""
    plan = plan_resolution([request.mpp or card.mpp], card.mpp)
    total = 0
    for y0, x0, y1, x1 in boxes:
        total += sum(count_tiles((y1 - y0, x1 - x0), request.settings, plan.factor).values())
    return total


def view_tiles(slide, card, request) -> int:
    """Tiles a view run (``request.view``) of ``slide`` computes."""
    from napari_histoseg.jobs.view import view_plan_of_slide

    plan = view_plan_of_slide(slide, request.view, card.mpp, request.settings.tile, request.mpp)
    y0, x0, y1, x1 = plan.box
    return sum(count_tiles((y1 - y0, x1 - x0), request.settings, plan.factor).values())


def area_text(height_um: float | None, width_um: float | None, height_px: int, width_px: int) -> str:
    """ "1.20 x 0.85 mm (2,400 x 1,700 px)"; pixels alone when the resolution is unknown."""
    px = f"{height_px:,} x {width_px:,} px"
    if not height_um or not width_um:
        return px
    if max(height_um, width_um) >= 1000:
        return f"{height_um / 1000:.2f} x {width_um / 1000:.2f} mm ({px})"
    return f"{height_um:.0f} x {width_um:.0f} um ({px})"
