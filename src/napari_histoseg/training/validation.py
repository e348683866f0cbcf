"""Validation of a model during training on whole colour-mask images, as its checkpoint will decide at inference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..engine.stain_transform import ReinhardNormalizer
from .config import TrainConfig
from .evaluate import EvalResult, evaluate_model


def validate_model(
    model: torch.nn.Module,
    samples: list,
    device: torch.device,
    config: TrainConfig,
    class_weights: np.ndarray,
    logit_bias: Sequence[float],
    normalize: ReinhardNormalizer | None = None,
) -> dict:
    """Validation metrics of ``model`` on whole images (``evaluate.evaluate_model``), deciding the classes as the
    saved checkpoint will at inference (with its logit bias and stain normaliser); leaves the model in eval."""
    result = None
    for event in evaluate_model(
        model,
        samples,
        device=device,
        batch_size=max(1, config.batch_size),
        opening_radius=config.opening_radius,
        amp=config.amp,
        class_weights=class_weights,
        logit_bias=logit_bias,
        normalize=normalize,
    ):
        result = event
    assert isinstance(result, EvalResult)
    return result.metrics
