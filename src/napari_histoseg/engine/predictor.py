"""Run the network over the windows of one block and blend them (the compute kernel of the engine)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..classes import NUM_CLASSES
from .device import autocast_for
from .tiling import gaussian_weight

log = logging.getLogger(__name__)


def logit_bias_tensor(logit_bias: Sequence[float], num_classes: int, device: torch.device | str) -> torch.Tensor | None:
    """The card's logit bias (ModelCard.logit_bias) as a (1, C, 1, 1) tensor to add to logits; None when empty."""
    if not len(logit_bias):
        return None
    if len(logit_bias) != num_classes:
        raise ValueError(f"logit_bias needs {num_classes} values, got {len(logit_bias)}")
    return torch.tensor(list(logit_bias), dtype=torch.float32, device=device).view(1, -1, 1, 1)


class BlockPredictor:
    """Blended class scores of a block: windows on a lattice, batched, weighted by a Gaussian.

    The result is the weighted *sum* of window probabilities: its argmax is the blended class, and dividing it by
    its sum over classes gives the blended probabilities (softmax rows sum to one), so no weight map is kept.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        tile: int,
        batch_size: int = 8,
        logit_bias: Sequence[float] = (),
        amp: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.device = device
        self.tile = tile
        self.batch_size = batch_size
        self.weight = torch.from_numpy(gaussian_weight(tile)).to(device)
        self.num_classes = int(getattr(getattr(model, "config", None), "num_classes", NUM_CLASSES))
        self.logit_bias = logit_bias_tensor(logit_bias, self.num_classes, device)  # added before the softmax
        self.amp = amp  # mixed precision where it is faster (device.autocast_for)
        self.typer: torch.nn.Module | None = None  # the cell typer on ``device`` (cell_typer.py), when one is used

    def to_device(self, region: np.ndarray) -> torch.Tensor:
        """Upload an (h, w, 3) uint8 region once, as (3, h, w) float in [0, 1] on the device."""
        tensor = torch.from_numpy(np.ascontiguousarray(region))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1).float().div_(255.0)

    @torch.inference_mode()
    def predict(
        self,
        image: torch.Tensor,
        starts: Sequence[tuple[int, int]],
        background: Sequence[tuple[int, int]] = (),
    ) -> torch.Tensor:
        """Blend the windows at ``starts`` over ``image`` (3, h, w); windows at ``background`` count as background.

        Returns the (num_classes, h, w) float32 blended sum on the device.
        """
        _, h, w = image.shape
        acc = torch.zeros((self.num_classes, h, w), dtype=torch.float32, device=self.device)
        t = self.tile
        for y, x in background:
            acc[0, y : y + t, x : x + t] += self.weight
        i = 0
        while i < len(starts):
            batch_starts = starts[i : i + self.batch_size]
            try:
                probs = self._forward(image, batch_starts)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of device memory: retrying with batch size %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for (y, x), p in zip(batch_starts, probs, strict=True):
                acc[:, y : y + t, x : x + t] += p * self.weight
            i += len(batch_starts)
        return acc

    def _forward(self, image: torch.Tensor, starts: Sequence[tuple[int, int]]) -> torch.Tensor:
        t = self.tile
        batch = torch.stack([image[:, y : y + t, x : x + t] for y, x in starts])
        batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device) if self.amp else contextlib.nullcontext():
            logits = self.model(batch)
        logits = logits.float()
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return F.softmax(logits, dim=1)
