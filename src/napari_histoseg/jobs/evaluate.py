"""The evaluate job: ``histoseg evaluate`` scores exactly the label maps ``histoseg predict`` writes.

For folder pairs (``input/`` + ``gt/``) the images of ``input/`` go through the same loop as ``histoseg predict
input/`` (:func:`~.folder.segment_folder`: the same inference call, stain statistics pooled over the folder, the
same opening), and each label map is scored against its ground truth with ``analysis.metrics``. Point-labelled
folders are scored by ``training.evaluate_points``. Validation during training is a separate, faster path
(``training.evaluate.evaluate_model``: whole images in batches) whose scores can differ slightly from these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from ..analysis.metrics import SegmentationMetrics
from ..engine.infer import InferenceSettings
from ..engine.jobs import folder_images, folder_stain_stats, load_model
from ..engine.stain_transform import normalizer_for
from ..training.evaluate import EvalProgress, EvalResult
from .folder import segment_folder
from .progress import Job, Progress, drive

_SETTINGS = {f.name for f in fields(InferenceSettings)}


def evaluation_settings(settings: InferenceSettings | None = None, **overrides) -> InferenceSettings:
    """The inference settings of an evaluation: ``settings`` (default: predict's) with ``overrides`` applied."""
    unknown = sorted(set(overrides) - _SETTINGS)
    if unknown:
        raise TypeError(f"not an inference setting: {', '.join(unknown)}")
    return replace(settings or InferenceSettings(), **overrides)


def evaluate_folder_job(
    data_dir: str | Path,
    checkpoint: str | Path | None,
    settings: InferenceSettings,
    *,
    tolerance: int = 60,
    on_labels: Callable[[str, np.ndarray], None] | None = None,
) -> Job[EvalResult]:
    """Score ``checkpoint`` (None: the bundled model) on the folder pairs under ``data_dir``.

    Yields a progress event per image (``detail``: an :class:`~napari_histoseg.training.evaluate.EvalProgress`),
    returns the :class:`~napari_histoseg.training.evaluate.EvalResult`. ``on_labels(name, labels)`` sees each
    label map scored. Raises ``DatasetError`` for unusable data and ``CheckpointError`` for an unusable checkpoint,
    before any image is segmented.
    """
    from ..training.image_files import read_image
    from ..training.pair_folders import find_pairs
    from ..training.samples import load_pairs

    model, card = load_model(checkpoint)
    settings = settings.for_model(card)
    pairs = find_pairs(data_dir)
    samples, _ = load_pairs(pairs, tolerance=tolerance)
    by_file = {pair.image.name: sample for pair, sample in zip(pairs, samples, strict=True)}
    images = folder_images(Path(data_dir) / "input")
    metrics = SegmentationMetrics(num_classes=model.config.num_classes)
    t0 = time.perf_counter()
    done = 0
    stain = folder_stain_stats(images, read_image, card, settings)
    for path, result in segment_folder(images, model, card, settings, only=set(by_file), stain=stain):
        if isinstance(result, Exception):
            raise result
        sample = by_file[path.name]
        if on_labels is not None:
            on_labels(sample.name, result.labels)
        metrics.update(result.labels, sample.labels, sample.inst)
        done += 1
        elapsed = time.perf_counter() - t0
        rate = EvalProgress(done, len(samples), done / elapsed if elapsed > 0 else 0.0)
        yield Progress(done, len(samples), "scoring", sample.name, "image", detail=rate)
    normalize = None if stain is None else normalizer_for(stain, card.stain_stats)
    return EvalResult(
        metrics=metrics.compute(),
        images=done,
        seconds=time.perf_counter() - t0,
        checkpoint=None if checkpoint is None else str(checkpoint),
        data_dir=str(data_dir),
        model_mpp=card.mpp,
        settings={
            **settings.result_settings(),
            "batch_size": settings.batch_size,
            "amp": settings.amp,
            "logit_bias": [float(b) for b in card.logit_bias],
            "stain": None if normalize is None else normalize.to_dict(),
        },
    )


def run_evaluation(
    data_dir: str | Path,
    checkpoint: str | Path | None,
    settings: InferenceSettings | None = None,
    *,
    on_event: Callable[[Progress], None] | None = None,
    tolerance: int = 60,
    **overrides,
) -> EvalResult:
    """:func:`evaluate_folder_job` run to its end; ``overrides`` are inference settings (``device="cpu"``,
    ``stain_normalize=False``, ...) applied to ``settings`` (default: those of ``histoseg predict``)."""
    job = evaluate_folder_job(data_dir, checkpoint, evaluation_settings(settings, **overrides), tolerance=tolerance)
    return drive(job, on_event)
