"""The training loss: cross-entropy weighted per class (N / N_c) and, optionally, per pixel (border weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor, border: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy with pixel weights ``class_weights[labels] + border``, normalised by their sum.

    Without ``border`` this is ``F.cross_entropy(logits, labels, weight=class_weights)``; ``border`` (B, H, W)
    adds U-Net's term that separates touching cells (``border_weights.border_weights``).
    """
    if border is None:
        return F.cross_entropy(logits, labels, weight=class_weights)
    pixel_weights = class_weights[labels] + border
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * pixel_weights).sum() / pixel_weights.sum()
