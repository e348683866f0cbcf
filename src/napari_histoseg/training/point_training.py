"""Point-labelled images as training samples: resampled to the model's resolution, colours mapped onto the model's
stain target as inference does, and labelled with partial targets from a teacher model (``point_targets``)."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.stain_stats import LabStats
from ..analysis.tissue import image_stain_stats
from ..engine.infer import InferenceSettings, run
from ..engine.jobs import segment_image
from ..engine.resolution import plan_resolution, rgb_to_compute
from ..engine.stain_transform import normalizer_for
from ..model.checkpoint import ModelCard
from .point_targets import hematoxylin_mask, point_targets
from .points import PointSample, PointSpec, find_point_files, load_point_samples, read_spec
from .samples import Sample

log = logging.getLogger(__name__)


def resample_to_model(sample: PointSample, model_mpp: float | None) -> PointSample:
    """The sample on the model's grid: the image scaled by the power of two inference would use, points with it."""
    plan = plan_resolution([sample.mpp], model_mpp)
    if plan.factor == 1.0:
        return sample
    resized = rgb_to_compute(sample.image, plan.factor)
    # Pixel centres map as (p + 0.5) * f - 0.5.
    points = (sample.points + 0.5) * plan.factor - 0.5
    return PointSample(sample.name, resized, points, sample.classes, model_mpp)


def normalize_stain(image: np.ndarray, target: LabStats | None) -> np.ndarray:
    """The image's colours mapped onto ``target`` (Reinhard, as inference maps a slide); unchanged without one."""
    normalize = normalizer_for(image_stain_stats(image), target)
    if normalize is None:
        return image
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    out = normalize(rgb).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return out.permute(1, 2, 0).numpy()


def _cache_name(sample: PointSample, teacher_sha: str) -> str:
    digest = hashlib.sha256(sample.image.tobytes() + sample.points.tobytes() + teacher_sha.encode()).hexdigest()
    return f"{sample.name}.{digest[:16]}.npz"


def point_training_samples(
    samples: Sequence[PointSample],
    spec: PointSpec,
    teacher: torch.nn.Module,
    teacher_card: ModelCard,
    *,
    model_mpp: float | None,
    stain_target: LabStats | None,
    cache_dir: Path | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """Training samples of point-labelled images (module doc). Teacher targets are cached in ``cache_dir``, keyed
    by the image, its points and the teacher's weights, so a resumed run does not segment the images again."""
    teacher = copy.deepcopy(teacher)  # segment_image prepares (moves, re-lays out) the model it is given
    settings = InferenceSettings(stain_normalize=False, skip_background=False, cell_typer=False)  # shapes only
    teacher_sha = str(teacher_card.sha256 or teacher_card.name or "")
    out: list[Sample] = []
    for i, sample in enumerate(samples, start=1):
        resampled = resample_to_model(sample, model_mpp)
        image = normalize_stain(resampled.image, stain_target)
        mpp = resampled.mpp or model_mpp or 0.25
        cached = cache_dir / _cache_name(resampled, teacher_sha) if cache_dir is not None else None
        if cached is not None and cached.is_file():
            target = np.load(cached)["target"]
        else:
            result = run(segment_image(image, teacher, teacher_card, settings, mpp=mpp, name=sample.name))
            nuclear = hematoxylin_mask(image)
            target = point_targets(result.labels, resampled.points, resampled.is_tumor(spec), mpp, nuclear)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.name + ".tmp.npz")
                np.savez_compressed(tmp, target=target)
                tmp.replace(cached)
        out.append(Sample(sample.name, image, target, None))
        if on_image is not None:
            on_image(i, len(samples))
    return out


@dataclass
class PointData:
    """The point-labelled part of a training run: training samples (partial targets) and validation images."""

    train: list[Sample]
    val: list[PointSample]
    train_spec: PointSpec | None
    val_spec: PointSpec | None
    sources: dict

    def describe(self) -> dict:
        """What the model card records about the point sets."""
        return {**self.sources, "train_images": len(self.train), "val_images": len(self.val)}


def _teacher(config) -> tuple[torch.nn.Module, ModelCard]:
    from ..engine.jobs import load_model

    return load_model(config.teacher or config.init)


def load_point_data(config, model_mpp: float | None, stain_target: LabStats | None, cache_dir: Path) -> PointData:
    """Read the point-labelled folders of a :class:`~.config.TrainConfig` and build their training samples."""
    train: list[Sample] = []
    train_spec = None
    sources: dict = {
        "train_dirs": config.points_dirs,
        "val_dir": config.points_val,
        "exclude_sites": config.exclude_sites,
        "points_share": config.points_share,
        "teacher": config.teacher or config.init or "bundled",
    }
    if config.points_dirs:
        teacher, teacher_card = _teacher(config)
        for folder in config.points_dirs:
            spec = read_spec(folder, mpp=config.points_mpp, tumor_classes=config.tumor_classes)
            samples = load_point_samples(find_point_files(folder), spec, exclude_sites=config.exclude_sites or ())
            log.info("building point targets for %d images of %s", len(samples), folder)
            train += point_training_samples(
                samples,
                spec,
                teacher,
                teacher_card,
                model_mpp=model_mpp,
                stain_target=stain_target,
                cache_dir=cache_dir,
            )
            train_spec = spec
        sources["tumor_classes"] = list(train_spec.tumor_classes)
        sources["train_names"] = [s.name for s in train]
    val: list[PointSample] = []
    val_spec = None
    if config.points_val:
        val_spec = read_spec(config.points_val, mpp=config.points_mpp, tumor_classes=config.tumor_classes)
        val = load_point_samples(find_point_files(config.points_val), val_spec)
    return PointData(train, val, train_spec, val_spec, sources)


def patch_share_weights(mask_samples: Sequence[Sample], point_samples: Sequence[Sample], share: float) -> list[float]:
    """Draw weights of the samples (colour-mask ones first): ``share`` of the patches from the point-labelled
    images, the rest from the colour-mask pairs, each group in proportion to its images' areas."""

    def areas(samples: Sequence[Sample]) -> np.ndarray:
        return np.array([s.labels.size for s in samples], dtype=np.float64)

    masks, points = areas(mask_samples), areas(point_samples)
    return [*((1 - share) * masks / masks.sum()), *(share * points / points.sum())]


def validate_points(model: torch.nn.Module, card: ModelCard, data: PointData, device, config) -> dict:
    """Scores of ``model`` on the point-labelled validation images, keyed as ``run_folder.POINT_METRICS``."""
    from .evaluate_points import evaluate_points

    settings = InferenceSettings(device=str(device), amp=config.amp, batch_size=max(1, config.batch_size))
    was_training = model.training
    copy_ = copy.deepcopy(model)  # segment_image prepares (re-lays out) the model it is given
    result = run(evaluate_points(copy_, card, data.val, data.val_spec, settings))
    model.train(was_training)
    scores = result.metrics
    return {
        "points_detection_f1": scores["detection_f1"],
        "points_type_f1_tumor": scores["type_f1_tumor"],
        "points_cellularity_mae": scores["cellularity_mae"],
        "points_cellularity_r": scores["cellularity_r"],
    }
