"""Validation during training: a model in memory scored on decoded folder pairs (``analysis.metrics``).

Fast rather than identical to inference: images are segmented whole (batched by size, ``inference_mode``, bf16
autocast on CUDA), with a weighted loss when asked; an image larger than ``whole_max`` px on a side is segmented
in overlapping 256 px windows blended as the inference engine does. The predicted labels are cleaned with the
same morphological opening as inference before anything is measured. ``histoseg evaluate`` does not use this
path: it scores exactly what ``histoseg predict`` writes (``napari_histoseg.jobs.evaluate``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.metrics import SCALAR_METRICS, SegmentationMetrics
from ..analysis.opening import DEFAULT_OPENING_RADIUS, open_labels
from ..classes import CLASS_NAMES
from ..engine.device import autocast_for
from ..engine.predictor import BlockPredictor, logit_bias_tensor
from ..engine.stain_transform import ReinhardNormalizer
from ..fileio import json_safe
from .patch_datasets import EvalDataset
from .samples import Sample

log = logging.getLogger(__name__)

#: Images up to this size (px, each side) run through the network in one piece; larger ones in windows.
DEFAULT_WHOLE_MAX = 1024
_WINDOW = 256


@dataclass
class EvalProgress:
    """A progress event: ``images_done`` of ``images_total`` scored."""

    images_done: int
    images_total: int
    images_per_second: float


@dataclass
class EvalResult:
    """Pooled metrics of a set (``metrics.SegmentationMetrics.compute()``, plus ``val_loss`` when weighted)."""

    metrics: dict
    images: int
    seconds: float
    checkpoint: str | None = None
    data_dir: str | None = None
    model_mpp: float | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict: NaN (an undefined score) becomes ``None``."""
        return json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def format_metrics(metrics: dict) -> str:
    """A short human-readable table of the metrics (for the CLI and logs)."""

    def f(x) -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"

    lines = [f"  Dice {name:<15} {f(d)}" for name, d in zip(CLASS_NAMES, metrics.get("dice", []), strict=False)]
    for key in (*SCALAR_METRICS, "val_loss"):
        if key in metrics:
            lines.append(f"  {key:<20} {f(metrics[key])}")
    if "n_true_cells" in metrics:
        lines.append(f"  cells true/predicted  {metrics['n_true_cells']}/{metrics['n_pred_cells']}")
    return "\n".join(lines)


def _batches(dataset: EvalDataset, batch_size: int, whole_max: int) -> list[list[int]]:
    """Indices grouped by image size (one batch holds images of one size); large images alone."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, sample in enumerate(dataset.samples):
        by_shape.setdefault(tuple(sample.labels.shape), []).append(i)
    batches = []
    for shape, indices in by_shape.items():
        step = 1 if max(shape) > whole_max else batch_size
        batches.extend(indices[i : i + step] for i in range(0, len(indices), step))
    return batches


def _windowed_probabilities(
    model: torch.nn.Module, image: torch.Tensor, batch_size: int, logit_bias: Sequence[float] = (), amp: bool = True
) -> torch.Tensor:
    """Class probabilities (C, H, W) of a large image from 256 px windows, Gaussian-blended like the engine."""
    from ..engine.tiling import WindowGrid, make_block

    _, h, w = image.shape
    grid = WindowGrid.from_overlap(_WINDOW, 0.25)
    block = make_block((0, 0), (h, w), max(h, w), grid)
    y0, x0, y1, x1 = block.read
    padded = torch.ones((3, y1 - y0, x1 - x0), dtype=image.dtype, device=image.device)
    padded[:, -y0 : -y0 + h, -x0 : -x0 + w] = image
    device = image.device
    predictor = BlockPredictor(model, device, tile=_WINDOW, batch_size=batch_size, logit_bias=logit_bias, amp=amp)
    starts = [(int(y), int(x)) for y in block.window_starts[0] for x in block.window_starts[1]]
    scores = predictor.predict(padded, starts)  # the engine's precision policy (device.autocast_for)
    scores = scores[:, -y0 : -y0 + h, -x0 : -x0 + w]
    return scores / scores.sum(dim=0, keepdim=True)


def _memory_format(model: torch.nn.Module) -> torch.memory_format:
    """The layout of the model's convolution weights, so that inputs need no conversion."""
    for p in model.parameters():
        if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1:
            return (
                torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            )
    return torch.contiguous_format


def _to_device(images: torch.Tensor, device: torch.device, normalize, memory_format) -> torch.Tensor:
    """A batch on ``device`` (pinned on CUDA), stain-normalised when asked, in the model's memory layout."""
    if device.type == "cuda":
        images = images.pin_memory()
    images = images.to(device, non_blocking=True)
    if normalize is not None:
        images = normalize(images)
    return images.contiguous(memory_format=memory_format)


def _weighted_loss(scores: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, raw: bool) -> tuple[float, float]:
    """``(summed loss, summed weight)`` of one image: the weighted cross-entropy of its raw logits (``raw``), or
    the negative log-likelihood of blended probabilities (an image segmented in windows)."""
    h, w = y.shape
    scores = scores[:, :, :h, :w]
    if raw:
        loss = F.cross_entropy(scores, y[None], weight=weights, reduction="sum")
    else:
        loss = F.nll_loss(scores.clamp_min(1e-8).log(), y[None], weight=weights, reduction="sum")
    return float(loss), float(weights[y].sum())


def evaluate_model(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    opening_radius: int = DEFAULT_OPENING_RADIUS,
    amp: bool = True,
    class_weights: Sequence[float] | np.ndarray | None = None,
    whole_max: int = DEFAULT_WHOLE_MAX,
    logit_bias: Sequence[float] = (),
    normalize: ReinhardNormalizer | None = None,
) -> Generator[EvalProgress | EvalResult, None, EvalResult]:
    """Score ``model`` on decoded ``samples``; yields an :class:`EvalProgress` per batch, then the result.

    The model must already be on ``device`` (default: the device of its parameters); it is put in eval mode
    and left there. With ``class_weights`` the weighted cross-entropy of the set is reported as ``val_loss``
    (of the raw logits, the training loss; for an image segmented in windows, of the blended probabilities,
    bias included). ``logit_bias`` (the card's) is added to the logits before the classes are decided, as at
    inference; ``normalize`` (a stain normaliser) maps the images' colours first.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if opening_radius < 0:
        raise ValueError(f"opening_radius must be >= 0, got {opening_radius}")
    if not samples:
        raise ValueError("evaluation needs at least one image")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    num_classes = int(getattr(getattr(model, "config", None), "num_classes", 4))
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    bias = logit_bias_tensor(logit_bias, num_classes, device)
    dataset = EvalDataset(samples, multiple=int(getattr(getattr(model, "config", None), "divisor", 8)))
    metrics = SegmentationMetrics(num_classes=num_classes)
    loss_sum = weight_sum = 0.0
    done = 0
    memory_format = _memory_format(model)
    t0 = time.perf_counter()
    model.eval()
    for batch in _batches(dataset, batch_size, whole_max):
        items = [dataset[i] for i in batch]
        images = _to_device(torch.stack([item[0] for item in items]), device, normalize, memory_format)
        with torch.inference_mode():
            if max(items[0][3]) > whole_max:
                h, w = items[0][3]
                probs = _windowed_probabilities(model, images[0, :, :h, :w], batch_size, logit_bias, amp)[None]
                logits = None
            else:
                with autocast_for(device) if amp else contextlib.nullcontext():
                    logits = model(images).float()
                probs = None
            decided = probs if logits is None else (logits if bias is None else logits + bias)
            pred = decided.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for k, (_, labels, inst, (h, w), _name) in enumerate(items):
                if weights is not None:
                    scores = probs if logits is None else logits[k : k + 1]
                    loss, weight = _weighted_loss(scores, labels[:h, :w].to(device), weights, logits is not None)
                    loss_sum, weight_sum = loss_sum + loss, weight_sum + weight
                gt_inst = inst[:h, :w].numpy() if inst.numel() else None
                metrics.update(open_labels(pred[k, :h, :w], opening_radius), labels[:h, :w].numpy(), gt_inst)
        done += len(batch)
        elapsed = time.perf_counter() - t0
        yield EvalProgress(done, len(dataset), done / elapsed if elapsed > 0 else 0.0)
    scores = metrics.compute()
    if weights is not None:
        scores["val_loss"] = loss_sum / weight_sum if weight_sum > 0 else float("nan")
    result = EvalResult(
        metrics=scores,
        images=len(dataset),
        seconds=time.perf_counter() - t0,
        settings={
            "opening_radius": opening_radius,
            "whole_max": whole_max,
            "batch_size": batch_size,
            "logit_bias": [float(b) for b in logit_bias],
            "stain": None if normalize is None else normalize.to_dict(),
        },
    )
    yield result
    return result
