"""Evaluate a model on folder pairs with the metrics of :mod:`napari_histoseg.analysis.metrics`.

The same code validates during training and runs ``histoseg evaluate``. Images are segmented whole (batched by
size, ``inference_mode``, bf16 autocast on CUDA); an image larger than ``whole_max`` px on a side is segmented
in overlapping 256 px windows blended as the inference engine does. The predicted labels are cleaned with the
same morphological opening as inference before anything is measured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.metrics import SCALAR_METRICS, SegmentationMetrics
from ..analysis.opening import open_labels
from ..classes import CLASS_NAMES
from ..engine.device import autocast_for, prepare_model, select_device
from ..engine.predictor import BlockPredictor, logit_bias_tensor
from ..engine.stain_transform import ReinhardNormalizer, normalizer_for
from ..fileio import json_safe
from .data import Sample, find_pairs, load_pairs, pooled_stain_stats
from .dataset import EvalDataset

log = logging.getLogger(__name__)

#: Opening radius applied to predictions before scoring (the inference engine's default).
DEFAULT_OPENING_RADIUS = 2
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
        images = torch.stack([item[0] for item in items])
        if device.type == "cuda":
            images = images.pin_memory()
        images = images.to(device, non_blocking=True)
        if normalize is not None:
            images = normalize(images)
        images = images.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            if max(items[0][3]) > whole_max:
                h, w = items[0][3]
                probs = _windowed_probabilities(model, images[0, :, :h, :w], batch_size, logit_bias, amp)[None]
                logits = None
            else:
                with autocast_for(device) if amp else contextlib.nullcontext():
                    logits = model(images)
                logits = logits.float()
                probs = None
            decided = probs if logits is None else (logits if bias is None else logits + bias)
            pred = decided.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for k, (_, labels, inst, (h, w), _name) in enumerate(items):
                if weights is not None:
                    y = labels[:h, :w].to(device)
                    if logits is not None:
                        out = logits[k : k + 1, :, :h, :w]
                        loss_sum += float(F.cross_entropy(out, y[None], weight=weights, reduction="sum"))
                    else:
                        logp = probs[0].clamp_min(1e-8).log()[None]
                        loss_sum += float(F.nll_loss(logp, y[None], weight=weights, reduction="sum"))
                    weight_sum += float(weights[y].sum())
                labels_np = open_labels(pred[k, :h, :w], opening_radius)
                gt = labels[:h, :w].numpy()
                gt_inst = inst[:h, :w].numpy() if inst.numel() else None
                metrics.update(labels_np, gt, gt_inst)
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


def evaluate(
    data_dir: str | Path,
    checkpoint: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 8,
    opening_radius: int = DEFAULT_OPENING_RADIUS,
    amp: bool = True,
    tolerance: int = 60,
    stain_normalize: bool = True,
    test_time_flips: bool = False,
) -> Generator[EvalProgress | EvalResult, None, EvalResult]:
    """Evaluate checkpoint ``checkpoint`` on the folder pairs under ``data_dir`` (``histoseg evaluate``).

    With ``stain_normalize`` and a card that records its training colours, the images are stain-normalised as
    inference does, with the colour statistics pooled over the whole folder (``data.pooled_stain_stats``).
    With ``test_time_flips`` the logits are averaged over four flips of each image (``engine.flips``).

    Raises :class:`~napari_histoseg.training.data.DatasetError` for unusable data and
    :class:`~napari_histoseg.model.checkpoint.CheckpointError` for an unusable checkpoint, before any work.
    """
    from ..model.checkpoint import load_checkpoint

    torch_device = select_device(device)
    model, card = load_checkpoint(checkpoint, device="cpu")
    samples, _ = load_pairs(find_pairs(data_dir), tolerance=tolerance)
    model = prepare_model(model, torch_device, channels_last=True, test_time_flips=test_time_flips)
    normalize = None
    if stain_normalize and card.stain_stats is not None:
        normalize = normalizer_for(pooled_stain_stats(samples), card.stain_stats)
    result = None
    for event in evaluate_model(
        model,
        samples,
        device=torch_device,
        batch_size=batch_size,
        opening_radius=opening_radius,
        amp=amp,
        logit_bias=card.logit_bias,
        normalize=normalize,
    ):
        if isinstance(event, EvalResult):
            result = event
        else:
            yield event
    assert result is not None
    result.checkpoint = str(checkpoint)
    result.data_dir = str(data_dir)
    result.model_mpp = card.mpp
    result.settings["test_time_flips"] = test_time_flips
    yield result
    return result


def run_evaluation(
    data_dir: str | Path,
    checkpoint: str | Path,
    *,
    on_event: Callable[[EvalProgress | EvalResult], None] | None = None,
    **kwargs,
) -> EvalResult:
    """Run :func:`evaluate` synchronously; ``on_event`` sees every event. Returns the :class:`EvalResult`."""
    result = None
    for event in evaluate(data_dir, checkpoint, **kwargs):
        if on_event is not None:
            on_event(event)
        result = event
    assert isinstance(result, EvalResult)
    return result
