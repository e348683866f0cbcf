"""ResUNet++ (Jha et al. 2019): a residual U-Net with squeeze-and-excitation, ASPP and attention gates.

Layout, following the paper and its reference implementation:

- stem: conv-BN-ReLU-conv plus a 1x1 shortcut, then squeeze-and-excitation (full resolution, ``widths[0]``);
- encoder: residual blocks (pre-activation BN-ReLU-conv x2, 1x1 shortcut, SE), each halving the size;
- bridge: ASPP with ``bridge`` channels (a 3x3 branch plus one dilated 3x3 branch per rate, summed, 1x1 conv);
- decoder: per level an attention block gates the decoder features with the encoder skip, then 2x nearest
  upsampling, concatenation with the skip, and a residual block;
- head: ASPP to ``widths[0]`` channels, then a 1x1 conv to the class logits.

Example::

    >>> model = build_model(ModelConfig.scaled(0.25)).eval()
    >>> logits = model(torch.rand(1, 3, 64, 64))  # RGB in [0, 1], any size divisible by model.config.divisor
    >>> tuple(logits.shape)
    (1, 4, 64, 64)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..classes import NUM_CLASSES

#: Per-channel RGB mean and std of the CoNSeP training patches (values in [0, 1]).
HE_MEAN: tuple[float, float, float] = (0.83, 0.71, 0.85)
HE_STD: tuple[float, float, float] = (0.16, 0.20, 0.13)

SE_RATIO = 8


class ModelConfigError(ValueError):
    """A model configuration has an unknown key or an invalid value."""


class InputSizeError(ValueError):
    """An input the network cannot take (wrong rank, channels, or spatial size)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a ResUNet++.

    ``widths`` are the stem width followed by one width per downsampling encoder stage, so inputs must be
    divisible by ``2 ** (len(widths) - 1)`` (8 by default). ``mean``/``std`` normalise RGB in [0, 1] inside
    the model, so callers always pass plain RGB.
    """

    in_channels: int = 3
    num_classes: int = NUM_CLASSES
    widths: tuple[int, ...] = (16, 32, 64, 128)
    bridge: int = 256
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    mean: tuple[float, ...] = HE_MEAN
    std: tuple[float, ...] = HE_STD

    def __post_init__(self) -> None:
        for name in ("widths", "aspp_rates", "mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ModelConfigError(f"ModelConfig.{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("in_channels", "num_classes", "bridge"):
            _check_positive_int(name, getattr(self, name))
        if len(self.widths) < 2:
            raise ModelConfigError(f"ModelConfig.widths needs a stem and at least one stage, got {self.widths}")
        for w in self.widths:
            _check_positive_int("widths", w)
        if self.num_classes < 2:
            raise ModelConfigError(f"ModelConfig.num_classes must be at least 2, got {self.num_classes}")
        for r in self.aspp_rates:
            _check_positive_int("aspp_rates", r)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != self.in_channels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise ModelConfigError(f"ModelConfig.{name} needs {self.in_channels} finite numbers, got {value}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ModelConfigError(f"ModelConfig.std must be positive, got {self.std}")

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this (2 ** number of downsampling stages)."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys or bad values raise :class:`ModelConfigError`."""
        if not isinstance(d, dict):
            raise ModelConfigError(f"model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def scaled(cls, width_multiplier: float, **overrides: Any) -> ModelConfig:
        """Default architecture with every width multiplied (rounded to a multiple of 4, at least 4).

        ``scaled(0.25)`` gives widths (4, 8, 16, 32) and bridge 64: a tiny model for tests and CPUs.
        """
        if not isinstance(width_multiplier, (int, float)) or not 0 < width_multiplier <= 16:
            raise ModelConfigError(f"width multiplier must be in (0, 16], got {width_multiplier!r}")
        base = cls()

        def scale(c: int) -> int:
            return max(4, 4 * round(c * width_multiplier / 4))

        return cls(**{"widths": tuple(scale(w) for w in base.widths), "bridge": scale(base.bridge), **overrides})

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`InputSizeError` naming the nearest valid sizes if (height, width) cannot be taken."""
        d = self.divisor
        for axis, size in (("height", height), ("width", width)):
            if size < d or size % d:
                lower, upper = (size // d) * d, (size // d + 1) * d
                nearest = f"{lower} or {upper}" if lower >= d else f"{upper}"
                raise InputSizeError(
                    f"input {axis} {size} cannot be taken: sizes must be multiples of {d} and at least {d} "
                    f"(input {height}x{width}); nearest valid {axis}: {nearest}"
                )


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelConfigError(f"ModelConfig.{name} must hold positive integers, got {value!r}")


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, ratio: int = SE_RATIO) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # mean over H, W and a broadcast multiply keep channels_last tensors channels_last.
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


def _bn_relu_conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 3, stride=stride, padding=1))


class StemBlock(nn.Module):
    """First block: conv-BN-ReLU-conv plus a 1x1 conv-BN shortcut, then squeeze-and-excitation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
        self.se = SqueezeExcite(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.conv(x) + self.shortcut(x))


class ResidualBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv x2), 1x1 conv-BN shortcut, squeeze-and-excitation."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(_bn_relu_conv(cin, cout, stride), _bn_relu_conv(cout, cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))
        self.se = SqueezeExcite(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.conv(x) + self.shortcut(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a plain and one dilated 3x3 branch per rate, summed, 1x1 conv."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r), nn.BatchNorm2d(cout)) for r in (1, *rates)
        )
        self.project = nn.Conv2d(cout, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        return self.project(y)


class AttentionBlock(nn.Module):
    """Gate decoder features ``x`` with the encoder skip ``g`` (twice the size of ``x``)."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(_bn_relu_conv(skip_channels, channels), nn.MaxPool2d(2))
        self.decoder = _bn_relu_conv(channels, channels)
        self.gate = _bn_relu_conv(channels, channels)

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        return self.gate(self.skip(g) + self.decoder(x)) * x


class DecoderBlock(nn.Module):
    """Attention gate, 2x nearest upsampling, concatenation with the skip, residual block."""

    def __init__(self, skip_channels: int, channels: int, cout: int) -> None:
        super().__init__()
        self.attention = AttentionBlock(skip_channels, channels)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.residual = ResidualBlock(channels + skip_channels, cout)

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:
        x = self.up(self.attention(skip, x))
        return self.residual(torch.cat([x, skip], dim=1))


class ResUNetPlusPlus(nn.Module):
    """ResUNet++ segmentation network: RGB in [0, 1] of shape (N, C, H, W) -> logits (N, classes, H, W)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        w = config.widths
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)
        self.stem = StemBlock(config.in_channels, w[0])
        self.encoder = nn.ModuleList(ResidualBlock(w[i - 1], w[i], stride=2) for i in range(1, len(w)))
        self.bridge = ASPP(w[-1], config.bridge, config.aspp_rates)
        decoder = []
        channels = config.bridge
        for level in reversed(range(len(w) - 1)):  # skips from the deepest encoder stage but one to the stem
            decoder.append(DecoderBlock(w[level], channels, w[level + 1]))
            channels = w[level + 1]
        self.decoder = nn.ModuleList(decoder)
        self.head = ASPP(channels, w[0], config.aspp_rates)
        self.classifier = nn.Conv2d(w[0], config.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for RGB input in [0, 1]; H and W must be multiples of ``config.divisor``."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputSizeError(f"expected input of shape (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        self.config.check_input_size(int(x.shape[2]), int(x.shape[3]))
        x = (x - self.mean) / self.std
        skips = [self.stem(x)]
        for block in self.encoder:
            skips.append(block(skips[-1]))
        y = self.bridge(skips.pop())
        for block in self.decoder:
            y = block(skips.pop(), y)
        return self.classifier(self.head(y))


def build_model(config: ModelConfig | None = None) -> ResUNetPlusPlus:
    """A freshly initialised ResUNet++ (default: 4 classes, widths 16/32/64/128, bridge 256)."""
    return ResUNetPlusPlus(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
