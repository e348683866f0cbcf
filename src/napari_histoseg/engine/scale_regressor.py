"""A size model: a small CNN that reads an image's resolution (log2 um/px) from an RGB tissue tile.

Trained by ``scripts/train_scale_regressor.py`` on CoNSeP and BRCA-M2C train images resampled to random
resolutions (about 0.18-1.5 um/px) with stain, blur and JPEG jitter. An image's estimate is the median over
crops of several tissue tiles (``engine/mpp_estimate.py``); the spread between the tiles says how far to trust it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

CROP = 128  # px: the side of the crops the network reads
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "scale_regressor.safetensors"
MEAN = (0.78, 0.62, 0.76)  # RGB in 0-1, roughly H&E tissue
STD = (0.17, 0.2, 0.15)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ScaleNet(nn.Module):
    """Stride-2 3x3 conv stages, global average pooling and one linear unit: log2(um/px) of a tile."""

    def __init__(self, widths: tuple[int, ...] = (48, 96, 192, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(3, widths[0], 2)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [_conv(cin, cout, 2), _conv(cout, cout, 1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 1)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or 0-255 float -> (N,) log2(um/px)."""
        x = (x.float() / 255 - self.mean) / self.std
        return self.head(self.features(x).mean(dim=(2, 3)))[:, 0]


def widths_of(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The stage widths of a :class:`ScaleNet` state dict (read off its convolutions' shapes)."""
    convs = sorted(
        (int(k.split(".")[1]), v.shape[0]) for k, v in state.items() if k.startswith("features.") and v.ndim == 4
    )
    widths = [convs[0][1]] + [cout for i, cout in convs[1:] if i % 2 == 1]  # stage starts: layers 0, 1, 3, 5...
    return tuple(widths)


@lru_cache(maxsize=2)
def load_scale_model(path: Path = WEIGHTS) -> ScaleNet:
    """The size model with the weights at ``path`` (the bundled ones by default), in eval mode."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    model = ScaleNet(widths_of(state))
    model.load_state_dict(state)
    return model.eval()


def crops(tile: np.ndarray, size: int = CROP) -> list[np.ndarray]:
    """Square ``size`` crops covering an (h, w, 3) tile (overlapping where it does not divide); the tile itself
    when it is smaller."""
    h, w = tile.shape[:2]
    if min(h, w) <= size:
        return [tile]
    ys = np.linspace(0, h - size, max(1, math.ceil(h / size))).round().astype(int)
    xs = np.linspace(0, w - size, max(1, math.ceil(w / size))).round().astype(int)
    return [tile[y : y + size, x : x + size] for y in ys for x in xs]


@torch.no_grad()
def predict_log2_mpp(model: nn.Module, images: list[np.ndarray], *, flips: bool = True) -> np.ndarray:
    """log2(um/px) of each (h, w, 3) uint8 image (equal shapes are batched), averaged over flips."""
    out = np.zeros(len(images), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for idx in by_shape.values():
        x = torch.from_numpy(np.stack([images[i][..., :3] for i in idx])).permute(0, 3, 1, 2)
        views = [x, x.flip(3), x.flip(2), x.flip(2, 3)] if flips else [x]
        out[idx] = torch.stack([model(v) for v in views]).mean(0).numpy()
    return out


@dataclass(frozen=True)
class ScaleReading:
    """The size model's reading of an image from the log2(um/px) of each tile's crops."""

    tile_logs: list[np.ndarray]

    @property
    def mpp(self) -> float:
        """The median over all crops."""
        return float(2 ** np.median(np.concatenate(self.tile_logs)))

    @property
    def tile_mpps(self) -> list[float]:
        """Each tile's median."""
        return [float(2 ** np.median(logs)) for logs in self.tile_logs]

    @property
    def spread(self) -> float:
        """Interquartile range / median of the per-tile estimates, or of the crops' when there is one tile (1.0
        with a single crop)."""
        values = self.tile_mpps if len(self.tile_logs) > 1 else [float(2**x) for x in self.tile_logs[0]]
        return relative_spread(values)


def relative_spread(values) -> float:
    """Interquartile range / median of ``values``; 1.0 (no agreement known) for fewer than two or a zero median."""
    if len(values) < 2:
        return 1.0
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float((q3 - q1) / med) if med else 1.0


def tile_logs(tile: np.ndarray, model: nn.Module) -> np.ndarray:
    """log2(um/px) of each crop of a tissue tile (at the image's own resolution)."""
    return predict_log2_mpp(model, crops(tile))
