"""The segmentation job the Segment widget runs in its worker: load the model, call the core, report the outcome.

Plain data in (:class:`SegmentRequest`), plain data out (:class:`SegmentOutcome`); no Qt, so the widget stays
a thin form. Slides go through :func:`~napari_histoseg.engine.jobs.segment_slide` into a zarr store (resumed
when the settings match, replaced when they do not); in-memory images through ``segment_image``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_histoseg.engine.infer import InferenceSettings
from napari_histoseg.engine.jobs import load_model, normalizes_stain, segment_image, segment_slide
from napari_histoseg.io.slide import open_slide
from napari_histoseg.io.store import LabelStore, StoreError
from napari_histoseg.io.tissue import image_stain_stats

from .job_meter import JobMeter
from .layers import Box, store_counts
from .workers import cancel_on_forward, count_on_forward


@dataclass
class SegmentRequest:
    """What to segment: a slide file (``slide_path`` + ``out`` store) or an in-memory ``image``."""

    name: str
    checkpoint: Path
    settings: InferenceSettings
    regions: list[Box] | None = None  # level-0 boxes; None: the whole image
    slide_path: Path | None = None
    out: Path | None = None
    image: Any = None
    mpp: float | None = None  # microns per level-0 pixel: the file's, the user's or an estimate; None: unknown
    scheduler: str | None = None  # slides: run the blocks on this dask scheduler (address or local:N)


@dataclass
class SegmentOutcome:
    """A finished (or cancelled) run: a store (slides) or label crops per region (in-memory images)."""

    counts: list[int] = field(default_factory=list)
    store_path: Path | None = None
    crops: list[tuple[Box, np.ndarray]] = field(default_factory=list)
    summary: dict | None = None


def _is_store(path: Path) -> bool:
    try:
        LabelStore.open(path)
    except StoreError:
        return False
    return True


def _resume_or_replace(make):
    """Resume the store when the settings match; replace it when it is an older histoseg run with others."""
    gen = make(False)
    try:
        first = next(gen)
    except StoreError:
        gen.close()
        path = make.out
        if not _is_store(path):
            raise
        gen = make(True)
        first = next(gen)
    yield first
    return (yield from gen)


class _SlideRun:
    def __init__(self, request: SegmentRequest, slide, model, card, region: Box | None, client=None):
        self.request, self.slide, self.model, self.card, self.region = request, slide, model, card, region
        self.client = client
        self.out = request.out

    def __call__(self, overwrite: bool):
        r = self.request
        if self.client is not None:
            from napari_histoseg.engine.distributed import segment_slide_distributed

            return segment_slide_distributed(
                self.slide,
                r.checkpoint,
                r.out,
                r.settings,
                self.client,
                input_mpp=r.mpp,
                region=self.region,
                overwrite=overwrite,
            )
        return segment_slide(
            self.slide,
            self.model,
            self.card,
            r.out,
            r.settings,
            input_mpp=r.mpp,
            region=self.region,
            overwrite=overwrite,
        )


def _close_client(client, scheduler: str) -> None:
    cluster = client.cluster if scheduler.startswith("local:") else None
    client.close()
    if cluster is not None:
        cluster.close()


def outcome_from_store(path: Path | None) -> SegmentOutcome | None:
    """The outcome recorded in a store so far (what a cancelled run keeps)."""
    if path is None or not _is_store(path):
        return None
    return SegmentOutcome(counts=store_counts(LabelStore.open(path)), store_path=path)


def _metered(job, meter: JobMeter | None, from_events: bool, base: int):
    """Pass a core job's events on; count its tiles from block events (distributed runs) and mark "writing"."""
    from napari_histoseg.engine.infer import InferenceProgress, InferenceResult

    gen = iter(job)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if meter is not None and from_events and isinstance(event, InferenceProgress):
            meter.set(base + event.windows_done)
        if meter is not None and isinstance(event, InferenceResult):
            meter.phase("writing")
        yield event


def segment_job(
    request: SegmentRequest, cancel: threading.Event, kept: list | None = None, meter: JobMeter | None = None
):
    """Generator for :class:`~.workers.JobRunner`: yields core progress events, returns a :class:`SegmentOutcome`.

    ``kept`` receives each finished in-memory crop as it completes, so a cancelled run keeps them; ``meter``
    (optional) follows the phases and counts every tile the network computes.
    """
    from .run_plan import image_tiles, slide_tiles

    if meter is not None:
        meter.phase("opening")
    model, card = load_model(request.checkpoint)
    hook = cancel_on_forward(model, cancel)
    tiles_per_batch = 4 if request.settings.test_time_flips else 1
    counter = count_on_forward(model, meter, tiles_per_batch) if meter is not None else None
    kept = [] if kept is None else kept
    try:
        if request.slide_path is not None:
            slide = open_slide(request.slide_path)
            client = None
            if request.scheduler:
                from napari_histoseg.engine.distributed import connect

                client = connect(request.scheduler)
            try:
                if meter is not None:
                    meter.phase("segmenting", slide_tiles(slide, card, request), "tile")
                result, base = None, 0
                for region in request.regions or [None]:
                    run = _SlideRun(request, slide, model, card, region, client)
                    result = yield from _metered(_resume_or_replace(run), meter, client is not None, base)
                    base += result.windows
            finally:
                slide.close()
                if client is not None:
                    _close_client(client, request.scheduler)
            outcome = outcome_from_store(request.out)
            outcome.summary = result.summary() if result is not None else None
            return outcome
        image = np.asarray(request.image)
        h, w = image.shape[:2]
        boxes = request.regions or [(0, 0, h, w)]
        # Every crop gets the colours of the whole image, as the blocks of a slide do.
        stain = image_stain_stats(image) if normalizes_stain(card, request.settings) else None
        if meter is not None:
            meter.phase("segmenting", image_tiles(boxes, card, request), "tile")
        for box in boxes:
            y0, x0, y1, x1 = box
            job = segment_image(
                image[y0:y1, x0:x1],
                model,
                card,
                request.settings,
                mpp=request.mpp,
                name=request.name,
                stain_source=stain,
            )
            result = yield from _metered(job, meter, False, 0)
            kept.append((box, result.labels))
        return SegmentOutcome(crops=list(kept), summary=result.summary())
    finally:
        hook.remove()
        if counter is not None:
            counter.remove()


@dataclass
class MeasureOutcome:
    """Cells of a result: the readout (whole result and each region) and the cellularity grid for the map."""

    readout: dict
    grid: Any


def measure_job(source: Any, regions: list, mpp: float | None, cancel: threading.Event, grid_px: int = 256):
    """Generator for :class:`~.workers.JobRunner`: extract cells block by block, return a :class:`MeasureOutcome`.

    ``source``: the label array (or multiscale list / store); ``regions``: polygons in its level-0 pixels;
    ``mpp``: microns per level-0 label pixel (areas in square microns, and the cell rules in the map's pixels).
    """
    from napari_histoseg.analysis.cells import CellProgress, CellTable, iter_cells, label_array
    from napari_histoseg.analysis.cellularity import CellularityGrid, cellularity_readout

    grid = CellularityGrid(tuple(label_array(source, 0).shape), grid_px)
    tables = []
    for event in iter_cells(source, mpp=mpp):
        if cancel.is_set():
            return None
        if isinstance(event, CellProgress):
            tables.append(event.table)
            grid.add(event.table)
            yield event
    table = CellTable.concat(tables) if tables else CellTable.empty(False)
    return MeasureOutcome(cellularity_readout(table, regions, mpp=mpp), grid)


def estimate_job(image: Any, cancel: threading.Event, meter: JobMeter | None = None):
    """Generator for :class:`~.workers.JobRunner`: estimate an image's microns per pixel with the bundled model
    (:mod:`napari_histoseg.engine.mpp_estimate`); returns an ``MppEstimate`` (None when cancelled)."""
    from napari_histoseg.engine.mpp_estimate import estimate_mpp_job

    if meter is not None:
        meter.phase("loading the model")
    model, card = load_model(None)
    hook = cancel_on_forward(model, cancel)
    try:
        gen = estimate_mpp_job(image, model, card, cancel=cancel)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if meter is not None:
                if event.done == 1:
                    meter.phase("measuring nuclei", event.total, "tile")
                meter.set(event.done, event.total)
            yield event
    finally:
        hook.remove()
