"""The engine's segmentation runs: a slide into a zarr store, or an in-memory image into an array.

Each is a generator of progress events ending in the result (see :mod:`.infer`); :func:`~.infer.run` drives one
synchronously. The front ends do not call these directly: :mod:`napari_histoseg.jobs` adds what a whole job
needs (local or distributed, regions, the store policy, folders of images and their pooled stain statistics).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.stain_stats import LabStats
from ..io.store import ArraySink, LabelStore
from ..model.checkpoint import ModelCard, load_checkpoint
from ..pixels import channels_last, scale_to_uint8, white_level
from .cell_typer import load_cell_typer
from .device import prepare_model, select_device
from .infer import InferenceProgress, InferenceResult, InferenceSettings, TissueTest, segment
from .predictor import BlockPredictor
from .resolution import ResolutionPlan, plan_resolution
from .stain_transform import ReinhardNormalizer, normalizer_for

log = logging.getLogger(__name__)

Job = Generator[InferenceProgress | InferenceResult, None, InferenceResult]


class SegmentationError(ValueError):
    """A segmentation job that cannot run as asked (names the input and the problem)."""


def default_model_path() -> Path | None:
    """The bundled default model shipped inside the package, if there is one."""
    from importlib.resources import files

    path = Path(str(files("napari_histoseg") / "weights" / "default.safetensors"))
    return path if path.is_file() else None


def load_model(checkpoint: str | os.PathLike | None) -> tuple[torch.nn.Module, ModelCard]:
    """Load a checkpoint (or the bundled default when ``checkpoint`` is None) on the CPU."""
    if checkpoint is None:
        checkpoint = default_model_path()
        if checkpoint is None:
            raise SegmentationError("no model given and no bundled default model is installed; pass a checkpoint")
    return load_checkpoint(checkpoint)


def make_predictor(
    model: torch.nn.Module, settings: InferenceSettings, logit_bias: Sequence[float] = ()
) -> BlockPredictor:
    """Put the model on the chosen device, ready for inference; ``logit_bias`` is its card's (ModelCard.logit_bias)."""
    device = select_device(settings.device)
    prepared = prepare_model(model, device, compile=settings.compile, test_time_flips=settings.test_time_flips)
    predictor = BlockPredictor(
        prepared,
        device,
        tile=settings.tile,
        batch_size=settings.batch_size,
        logit_bias=logit_bias,
        amp=settings.amp,
    )
    predictor.num_classes = model.config.num_classes
    if settings.cell_typer:
        predictor.typer = load_cell_typer().to(device)
    return predictor


def tissue_test(mask: np.ndarray, mask_downsample: float, output_downsample: float) -> TissueTest:
    """A test "any tissue in this output box?" backed by a low-resolution mask."""
    scale = output_downsample / mask_downsample

    def has_tissue(y0: int, x0: int, y1: int, x1: int) -> bool:
        my0, mx0 = max(0, math.floor(y0 * scale)), max(0, math.floor(x0 * scale))
        my1, mx1 = math.ceil(y1 * scale), math.ceil(x1 * scale)
        return bool(mask[my0:my1, mx0:mx1].any())

    return has_tissue


def _check_model_fits(name: str, shape: tuple[int, int], settings: InferenceSettings, divisor: int) -> None:
    if settings.tile % divisor:
        raise SegmentationError(f"tile {settings.tile} must be a multiple of {divisor} for this model")
    if min(shape) < 1:
        raise SegmentationError(f"{name}: the image is empty (shape {shape})")


def normalizes_stain(card: ModelCard, settings: InferenceSettings) -> bool:
    """Whether a job maps colours: the settings ask for it and the model records its training colours."""
    return settings.stain_normalize and card.stain_stats is not None


def stain_normalizer(
    card: ModelCard, settings: InferenceSettings, source: LabStats | None, name: str
) -> ReinhardNormalizer | None:
    """The stain normaliser of a job: from the image's colours (``source``) to the card's training colours.

    ``None`` when the settings turn it off, the model records no training colours, or the image holds too little
    tissue to measure (said in the log).
    """
    if not normalizes_stain(card, settings):
        return None
    if source is None:
        log.warning("%s: too little tissue to measure its stain colours; segmenting it without normalisation", name)
    return normalizer_for(source, card.stain_stats)


def segment_image(
    image: np.ndarray,
    model: torch.nn.Module,
    card: ModelCard,
    settings: InferenceSettings,
    *,
    mpp: float | None = None,
    name: str = "image",
    stain_source: LabStats | None = None,
) -> Job:
    """Segment an in-memory (H, W, 3) image; the result holds ``labels`` (H, W) uint8.

    Images smaller than a tile are padded (white) to one window, so any size works. With
    ``settings.stain_normalize``, colours are mapped onto the model's training data using ``stain_source``, the
    colour statistics of the slide the image comes from, or when it is not given those of the image itself.
    """
    settings = settings.for_model(card)
    image = channels_last(np.asarray(image))  # planar (3, H, W) too
    if image.dtype == np.uint16:  # by its real range (pixels.py)
        image = scale_to_uint8(image, white_level(image.max(initial=0)))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise SegmentationError(f"{name}: expected an RGB image (H, W, 3), got shape {image.shape}")
    _check_model_fits(name, image.shape[:2], settings, model.config.divisor)
    # An image without a stated resolution is taken to be at the model's (tiles, patches).
    plan = plan_resolution([mpp or card.mpp], card.mpp)
    predictor = make_predictor(model, settings, card.logit_bias)
    sink = ArraySink(image.shape[:2], probabilities=settings.probabilities)
    if stain_source is None and normalizes_stain(card, settings):
        from ..analysis.tissue import image_stain_stats

        stain_source = image_stain_stats(image)
    normalize = stain_normalizer(card, settings, stain_source, name)
    return segment(image[..., :3], predictor, sink, settings, plan, normalize=normalize)


#: The image files a folder run reads (``histoseg predict FOLDER``, ``histoseg evaluate``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """The images of a folder, without hidden files and the masks histoseg itself wrote there."""
    from ..io.outputs import read_manifest

    folder = Path(folder)
    own = read_manifest(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in own
    )


def folder_stain_stats(
    paths: Sequence[Path], read: Callable[[Path], np.ndarray], card: ModelCard, settings: InferenceSettings
) -> LabStats | None:
    """The stain statistics every image of a folder run is normalised from: pooled over all its images.

    Patches in one folder come from one slide or lab and share its staining; the statistics of a single patch
    depend too much on what it shows. ``None`` when the run does not normalise, or the folder holds too little
    tissue (each image then uses its own, :func:`segment_image`). Unreadable images are left out here (the run
    reports them when it reaches them). Images are read one at a time; a strided sample of each is kept.
    """
    from ..analysis.stain_stats import lab_stats

    if not normalizes_stain(card, settings) or not paths:
        return None

    def readable():
        for path in paths:
            try:
                yield read(path)
            except (ValueError, OSError, MemoryError):
                continue

    return lab_stats(readable(), count=len(paths))


@dataclass
class SlideJob:
    """Everything a slide run needs, decided before any block runs (shared by local and distributed runs)."""

    plan: ResolutionPlan
    shape: tuple[int, int]  # of the level segmented
    downsample: float  # level-0 pixels per output pixel
    store: LabelStore
    tissue: tuple[np.ndarray, float] | None  # (mask, level-0 px per mask px)
    blocks: list[tuple[int, int]] | None  # None: the whole slide
    normalize: ReinhardNormalizer | None = None  # the slide's stain normaliser

    def tissue_test(self) -> TissueTest | None:
        return None if self.tissue is None else tissue_test(*self.tissue, self.downsample)


def prepare_slide_job(
    slide,
    card: ModelCard,
    out: str | os.PathLike,
    settings: InferenceSettings,
    *,
    divisor: int = 8,
    level: int | None = None,
    input_mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
) -> SlideJob:
    """Choose the level, measure the tissue (mask and stain colours) and create (or reopen) the output store."""
    from ..analysis.tissue import image_stain_stats, mask_from_rgb, slide_thumbnail
    from ..io.outputs import check_not_input

    check_not_input(out, [slide.path])  # before anything is read or written
    settings = settings.for_model(card)
    plan = plan_resolution(slide.mpp, card.mpp, level=level, input_mpp=input_mpp)
    if plan.warning:
        warnings.warn(f"{slide.path.name}: {plan.warning}", stacklevel=3)
    image = slide.levels[plan.level]
    shape = (int(image.shape[0]), int(image.shape[1]))
    _check_model_fits(slide.path.name, shape, settings, divisor)
    downsample = slide.downsample(plan.level)
    normalizing = normalizes_stain(card, settings)
    tissue, normalize = None, None
    if settings.skip_background or normalizing:
        thumbnail, thumbnail_downsample = slide_thumbnail(slide)  # read once: it may be built from level 0
        if settings.skip_background:
            tissue = (mask_from_rgb(thumbnail, thumbnail_downsample), thumbnail_downsample)
        if normalizing:
            normalize = stain_normalizer(card, settings, image_stain_stats(thumbnail), slide.path.name)
    result_settings = {
        **settings.result_settings(),
        "level": plan.level,
        "factor": plan.factor,
        "model_sha256": card.sha256,
    }
    level0_mpp = slide.mpp[0] if input_mpp is None else input_mpp
    scale = (level0_mpp * downsample,) * 2 if level0_mpp else (downsample, downsample)
    store = LabelStore.create(
        out,
        shape,
        block=settings.block,
        settings=result_settings,
        scale=scale,
        unit="micrometer" if level0_mpp else None,
        probabilities=settings.probabilities,
        overwrite=overwrite,
        extra={
            "source": str(slide.path),
            "level": plan.level,
            "downsample": downsample,
            "mpp": plan.output_mpp,
            "model": {"name": card.name, "sha256": card.sha256, "mpp": card.mpp},
            "stain": None if normalize is None else normalize.to_dict(),
        },
    )
    blocks = None if region is None else blocks_in_region(region, downsample, shape, settings.block)
    return SlideJob(plan, shape, downsample, store, tissue, blocks, normalize)


def segment_slide(
    slide,
    model: torch.nn.Module,
    card: ModelCard,
    out: str | os.PathLike,
    settings: InferenceSettings,
    *,
    level: int | None = None,
    input_mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
) -> Job:
    """Segment a :class:`~napari_histoseg.io.slide.Slide` into a zarr label store at ``out``.

    The level is chosen to match the model's resolution (``level``/``input_mpp`` override); background blocks
    are skipped with the tissue mask when ``settings.skip_background``; ``region`` (level-0 y0, x0, y1, x1)
    restricts the run to the blocks it touches. A rerun with the same settings resumes.
    """
    job = prepare_slide_job(
        slide,
        card,
        out,
        settings,
        divisor=model.config.divisor,
        level=level,
        input_mpp=input_mpp,
        region=region,
        overwrite=overwrite,
    )
    settings = settings.for_model(card)
    predictor = make_predictor(model, settings, card.logit_bias)
    image = slide.levels[job.plan.level]
    result = yield from segment(
        image,
        predictor,
        job.store,
        settings,
        job.plan,
        tissue=job.tissue_test(),
        blocks=job.blocks,
        normalize=job.normalize,
    )
    if job.blocks is None:
        job.store.finalize(result.summary())
    return result


def blocks_in_region(
    region: tuple[int, int, int, int], downsample: float, shape: tuple[int, int], block: int
) -> list[tuple[int, int]]:
    y0, x0, y1, x1 = (v / downsample for v in region)
    by0, bx0 = max(0, int(y0 // block)), max(0, int(x0 // block))
    by1 = min(math.ceil(shape[0] / block), math.ceil(y1 / block))
    bx1 = min(math.ceil(shape[1] / block), math.ceil(x1 / block))
    if by1 <= by0 or bx1 <= bx0:
        raise SegmentationError(f"region {region} does not overlap the image ({shape[0]} x {shape[1]} px)")
    return [(by, bx) for by in range(by0, by1) for bx in range(bx0, bx1)]
