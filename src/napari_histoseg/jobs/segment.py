"""The segment job, once for every front end: a slide into a label store (here or on a dask cluster, whole or in
regions), or an image in memory (whole or in crops).

Store policy (the same for the CLI and the widgets): a rerun with the same settings resumes the store, finished
blocks kept; a store histoseg made with *other* settings is never replaced unless the request says ``overwrite``
(``--overwrite``, or the widget's "replace a result made with other settings"); anything that is not a histoseg
store is never replaced at all (:meth:`~napari_histoseg.io.store.LabelStore.create`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.infer import InferenceResult, InferenceSettings
from ..io.store import LabelStore, StoreError
from .progress import Job, of_inference, relay

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) in level-0 pixels


class OtherSettingsError(StoreError):
    """The output store holds a histoseg run made with other settings; it is kept unless asked to be replaced."""


@dataclass
class SlideRequest:
    """A slide to segment into the store ``out``. ``mpp``: microns per level-0 px (``"auto"``: the file's, else
    estimated from the nuclei); ``regions``: level-0 boxes (None: the whole slide); ``scheduler``: a dask
    scheduler address or ``local:N`` (None: this process)."""

    slide: Path
    out: Path
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    checkpoint: Path | None = None  # None: the bundled model
    level: int | None = None
    mpp: float | str | None = None
    regions: list[Box] | None = None
    scheduler: str | None = None
    overwrite: bool = False


@dataclass
class SlideOutcome:
    """A finished slide run: the store, the core result of the last region run, and its summary."""

    store: LabelStore
    result: InferenceResult | None
    summary: dict | None
    resumed_all: bool  # nothing was computed: every block came from an earlier run


def is_store(path: Path) -> bool:
    """Whether ``path`` is a histoseg label store."""
    try:
        LabelStore.open(path)
    except StoreError:
        return False
    return True


def _close(client, scheduler: str) -> None:
    cluster = client.cluster if scheduler.startswith("local:") else None
    client.close()
    if cluster is not None:
        cluster.close()


def _slide_mpp(slide, mpp: float | str | None) -> float | None:
    if mpp == "auto":
        from ..engine.mpp_estimate import auto_mpp

        return auto_mpp(slide.levels, stated=slide.mpp[0], name=slide.path.name)
    return mpp


def _region_job(request: SlideRequest, slide, model, card, client, region: Box | None, overwrite: bool, mpp):
    options = {"level": request.level, "input_mpp": mpp, "region": region, "overwrite": overwrite}
    if client is not None:
        from ..engine.distributed import segment_slide_distributed
        from ..engine.jobs import default_model_path

        checkpoint = request.checkpoint or default_model_path()
        return segment_slide_distributed(slide, checkpoint, request.out, request.settings, client, **options)
    from ..engine.jobs import segment_slide

    return segment_slide(slide, model, card, request.out, request.settings, **options)


def _start(gen):
    """Start a core job (creating or reopening its store); a store with other settings raises a named error."""
    try:
        return next(gen)
    except StoreError as err:
        gen.close()
        if "other settings" in str(err):
            raise OtherSettingsError(str(err)) from err
        raise


def segment_slide_job(request: SlideRequest, model=None, card=None) -> Job[SlideOutcome]:
    """Segment a slide as ``request`` says; yields :class:`~.progress.Progress`, returns a :class:`SlideOutcome`.

    ``model``/``card``: an already loaded model (the widget hooks Cancel into it); by default the request's
    checkpoint is loaded. With a ``scheduler`` the blocks run on dask workers, and a ``local:N`` cluster is shut
    down with the run.
    """
    from ..engine.jobs import load_model
    from ..io.slide import open_slide

    if model is None and request.scheduler is None:
        model, card = load_model(request.checkpoint)
    client = None
    with open_slide(request.slide) as slide:
        mpp = _slide_mpp(slide, request.mpp)
        if request.scheduler:
            from ..engine.distributed import connect

            client = connect(request.scheduler)
        try:
            result, computed = None, False
            for k, region in enumerate(request.regions or [None]):
                # Only the first region may replace the store: the next ones add to it.
                gen = _region_job(request, slide, model, card, client, region, request.overwrite and k == 0, mpp)
                first = _start(gen)
                event = of_inference(first)
                if event is not None:
                    yield event
                result = yield from relay(gen, of_inference)
                computed = computed or result.blocks_resumed < result.blocks_total
        finally:
            if client is not None:
                _close(client, request.scheduler)
    store = LabelStore.open(request.out)
    return SlideOutcome(store, result, None if result is None else result.summary(), not computed)


@dataclass
class ImageOutcome:
    """A finished in-memory run: each crop's box and labels, and the summary of the last one."""

    crops: list[tuple[Box, np.ndarray]]
    summary: dict | None


def segment_array_job(
    image: Any,
    model,
    card,
    settings: InferenceSettings,
    *,
    regions: list[Box] | None = None,
    mpp: float | None = None,
    name: str = "image",
    kept: list | None = None,
) -> Job[ImageOutcome]:
    """Segment an in-memory image, whole or each box of ``regions``; every crop gets the stain colours of the whole
    image, as the blocks of a slide get the slide's. ``kept`` receives each crop as it finishes (a cancelled run
    keeps them)."""
    from ..analysis.tissue import image_stain_stats
    from ..engine.jobs import normalizes_stain, segment_image

    image = np.asarray(image)
    h, w = image.shape[:2]
    kept = [] if kept is None else kept
    stain = image_stain_stats(image) if normalizes_stain(card, settings) else None
    result = None
    for box in regions or [(0, 0, h, w)]:
        y0, x0, y1, x1 = box
        job = segment_image(image[y0:y1, x0:x1], model, card, settings, mpp=mpp, name=name, stain_source=stain)
        result = yield from relay(job, of_inference)
        kept.append((box, result.labels))
    return ImageOutcome(list(kept), None if result is None else result.summary())
