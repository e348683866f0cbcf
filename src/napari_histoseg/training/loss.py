"""The training loss: cross-entropy weighted per class (N / N_c) and, optionally, per pixel (border weights).

Targets may also be partial (point-labelled images, ``point_targets``): ``CELL_ANY`` allows either cell class
and costs ``-log(p_tumor + p_non_tumor)``; ``IGNORE`` costs nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..classes import NON_TUMOR, TUMOR
from .point_targets import CELL_ANY, IGNORE


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor, border: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy with pixel weights ``class_weights[labels] + border``, normalised by their sum.

    Without ``border`` and without partial codes this is ``F.cross_entropy(logits, labels, weight=class_weights)``;
    ``border`` (B, H, W) adds U-Net's term that separates touching cells (``border_weights.border_weights``).
    Labels ``CELL_ANY`` and ``IGNORE`` are handled as the module doc says (border weight not added there).
    """
    num_classes = logits.shape[1]
    if border is None and int(labels.max()) < num_classes:
        return F.cross_entropy(logits, labels, weight=class_weights)
    known = labels < num_classes
    any_cell = labels == CELL_ANY
    safe = torch.where(known, labels, torch.zeros_like(labels))
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, safe[:, None])[:, 0]
    if bool(any_cell.any()):
        nll_any = -torch.logsumexp(log_p[:, [TUMOR, NON_TUMOR]], dim=1)
        nll = torch.where(any_cell, nll_any, nll)
    any_weight = (class_weights[TUMOR] + class_weights[NON_TUMOR]) / 2
    weights = torch.where(known, class_weights[safe], torch.where(any_cell, any_weight, torch.zeros_like(nll)))
    if border is not None:
        weights = weights + border * known
    ignored = labels == IGNORE
    weights = torch.where(ignored, torch.zeros_like(weights), weights)
    total = weights.sum()
    if float(total) == 0:
        return (logits * 0).sum()  # nothing labelled in this batch: a zero loss that still has a graph
    return (nll * weights).sum() / total
