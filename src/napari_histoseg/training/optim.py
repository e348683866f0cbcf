"""The optimiser, its learning-rate schedule, and frozen BatchNorm for fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .config import TrainConfig


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` names, at ``config.lr`` with its weight decay."""
    wd = config.weight_decay
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=wd)


#: The top-level modules each ``TrainConfig.trainable`` choice trains (``all``: every parameter).
TRAINABLE_MODULES = {"decoder": ("decoder", "head", "classifier"), "head": ("head", "classifier")}


def trainable_parameters(model: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    """The parameters a run trains; the others are frozen (``requires_grad`` False)."""
    if trainable == "all":
        return list(model.requires_grad_(True).parameters())
    names = TRAINABLE_MODULES[trainable]
    chosen = []
    for name, child in model.named_children():
        child.requires_grad_(name in names)
        if name in names:
            chosen.extend(child.parameters())
    return chosen


def lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based): warm-up, then the schedule."""
    if config.warmup and step < config.warmup:
        return (step + 1) / config.warmup
    if config.scheduler != "cosine":
        return 1.0
    span = max(1, total_steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer of ``model`` in eval mode: running statistics used and kept, affine still trained."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def logit_adjustment(class_weights: Sequence[float]) -> list[float]:
    """The logit bias that undoes the weighted loss's prior shift: ``-log(w_c)`` (see ``ModelCard.logit_bias``)."""
    return [-math.log(float(w)) for w in class_weights]
