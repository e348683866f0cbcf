"""The jobs the Segment widget runs in its worker: segment, count cells, estimate the resolution. No Qt.

Plain data in (:class:`SegmentRequest`), plain data out (:class:`SegmentOutcome`): the work is the jobs layer's
(:mod:`napari_histoseg.jobs.segment`, :mod:`napari_histoseg.jobs.measure`); here the model gets its Cancel and
tile-count hooks and the meter its phases. A slide's store is resumed when its settings match; a store made with
other settings is kept unless the request says ``overwrite`` (the form's "replace a result made with other
settings"), as on the command line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_histoseg.engine.infer import InferenceProgress, InferenceResult, InferenceSettings
from napari_histoseg.engine.jobs import load_model
from napari_histoseg.io.store import LabelStore
from napari_histoseg.jobs.measure import readout_job
from napari_histoseg.jobs.progress import Progress
from napari_histoseg.jobs.segment import SlideRequest, is_store, segment_array_job, segment_slide_job
from napari_histoseg.jobs.view import ViewOutcome, segment_view_job

from .job_hooks import cancel_on_forward, count_on_forward
from .job_meter import JobMeter
from .layers import Box, store_counts


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
    overwrite: bool = False  # slides: replace a store histoseg made with other settings
    view: Box | None = None  # slides: the visible level-0 box, segmented in memory rounded to tiles (no store)

    def slide_request(self) -> SlideRequest:
        return SlideRequest(
            self.slide_path,
            self.out,
            self.settings,
            checkpoint=self.checkpoint,
            mpp=self.mpp,
            regions=self.regions,
            scheduler=self.scheduler,
            overwrite=self.overwrite,
        )


@dataclass
class SegmentOutcome:
    """A finished (or cancelled) run: a store (slides) or label crops per region (in-memory images)."""

    counts: list[int] = field(default_factory=list)
    store_path: Path | None = None
    crops: list[tuple[Box, np.ndarray]] = field(default_factory=list)
    summary: dict | None = None
    view: ViewOutcome | None = None  # a slide's view, segmented in memory


def outcome_from_store(path: Path | None) -> SegmentOutcome | None:
    """The outcome recorded in a store so far (what a cancelled run keeps)."""
    if path is None or not is_store(path):
        return None
    return SegmentOutcome(counts=store_counts(LabelStore.open(path)), store_path=path)


class _Metered:
    """Passes a job's progress on, and moves the meter: tiles from block events when the blocks run elsewhere
    (dask workers: the model hook sees nothing), "writing" when a run's labels are done."""

    def __init__(self, meter: JobMeter | None, from_events: bool):
        self.meter, self.from_events, self.base = meter, from_events, 0

    def __call__(self, job):
        while True:
            try:
                event: Progress = next(job)
            except StopIteration as stop:
                return stop.value
            if self.meter is not None:
                if self.from_events and isinstance(event.detail, InferenceProgress):
                    self.meter.set(self.base + event.detail.windows_done)
                if isinstance(event.detail, InferenceResult):
                    self.base += event.detail.windows
                    self.meter.phase("writing")
            yield event


def _tile_total(request: SegmentRequest, card) -> int:
    from napari_histoseg.io.slide import open_slide

    from .run_plan import image_tiles, slide_tiles, view_tiles

    if request.slide_path is None:
        h, w = np.shape(request.image)[:2]
        return image_tiles(request.regions or [(0, 0, h, w)], card, request)
    with open_slide(request.slide_path) as slide:
        if request.view is not None:
            return view_tiles(slide, card, request)
        return slide_tiles(slide, card, request)


def segment_job(
    request: SegmentRequest, cancel: threading.Event, kept: list | None = None, meter: JobMeter | None = None
):
    """Generator for :class:`~.workers.JobRunner`: yields progress events, returns a :class:`SegmentOutcome`.

    ``kept`` receives each finished in-memory crop as it completes, so a cancelled run keeps them; ``meter``
    (optional) follows the phases and counts every tile the network computes.
    """
    if meter is not None:
        meter.phase("opening")
    model, card = load_model(request.checkpoint)
    hook = cancel_on_forward(model, cancel)
    tiles_per_batch = 4 if request.settings.test_time_flips else 1
    counter = count_on_forward(model, meter, tiles_per_batch) if meter is not None else None
    kept = [] if kept is None else kept
    try:
        if meter is not None:
            meter.phase("segmenting", _tile_total(request, card), "tile")
        metered = _Metered(meter, request.scheduler is not None)
        if request.view is not None:
            job = segment_view_job(request.slide_path, request.view, model, card, request.settings, mpp=request.mpp)
            view = yield from metered(job)
            outcome = SegmentOutcome(summary=view.summary, view=view)
        elif request.slide_path is not None:
            slide = yield from metered(segment_slide_job(request.slide_request(), model, card))
            outcome = outcome_from_store(request.out)
            outcome.summary = slide.summary
        else:
            job = segment_array_job(
                request.image,
                model,
                card,
                request.settings,
                regions=request.regions,
                mpp=request.mpp,
                name=request.name,
                kept=kept,
            )
            crops = yield from metered(job)
            outcome = SegmentOutcome(crops=crops.crops, summary=crops.summary)
        # For the readout: whose cell types these are.
        outcome.summary = {**(outcome.summary or {}), "cell_typer": request.settings.for_model(card).cell_typer}
        return outcome
    finally:
        hook.remove()
        if counter is not None:
            counter.remove()


def measure_job(source: Any, regions: list, mpp: float | None, cancel: threading.Event, grid_px: int = 256):
    """Generator for :class:`~.workers.JobRunner`: the cells of a result, block by block; returns a
    :class:`~napari_histoseg.jobs.measure.Readout` (``cancel`` is watched by the runner, between blocks)."""
    return readout_job(source, regions, mpp, grid_px)


def estimate_job(image: Any, cancel: threading.Event, meter: JobMeter | None = None):
    """Generator for :class:`~.workers.JobRunner`: estimate an image's microns per pixel with the size model
    (:mod:`napari_histoseg.engine.mpp_estimate`); returns an ``MppEstimate`` (None when cancelled)."""
    from napari_histoseg.engine.mpp_estimate import estimate_mpp_job

    gen = estimate_mpp_job(image, cancel=cancel)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if meter is not None:
            if event.done == 1:
                meter.phase("reading tissue tiles", event.total, "tile")
            meter.set(event.done, event.total)
        yield Progress(event.done, event.total, "reading tissue tiles", "", "tile", detail=event)
