"""Test-time augmentation: a network's logits averaged over the four flips of its input."""

from __future__ import annotations

import torch
from torch import nn


class FlipAveraged(nn.Module):
    """Wrap ``model`` so its logits are the mean over the input and its horizontal, vertical and double flips.

    Each flipped copy's output is flipped back before averaging, so the result lines up with the input. The four
    copies run as one batch (four times the work of the plain model). ``config`` is the wrapped model's, so code
    reading ``model.config`` (classes, divisor) works on the wrapper too. Opt-in: it does not help every model
    (docs/tuning-log.md, "Test-time flips").
    """

    _FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([x.flip(dims) if dims else x for dims in self._FLIPS])
        outputs = self.model(batch).chunk(len(self._FLIPS))
        total = outputs[0].float()
        for dims, out in zip(self._FLIPS[1:], outputs[1:], strict=True):
            total = total + out.float().flip(dims)
        return (total / len(self._FLIPS)).to(outputs[0].dtype)
