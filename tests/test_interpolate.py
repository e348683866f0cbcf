"""Weight-space interpolation between a starting model and its fine-tune."""

from __future__ import annotations

import pytest
import torch

from napari_histoseg.model.interpolate import interpolate_weights
from napari_histoseg.model.resunetpp import ModelConfig, build_model


def test_ends_and_midpoint():
    torch.manual_seed(0)
    a, b = build_model(ModelConfig.scaled(0.25)), build_model(ModelConfig.scaled(0.25))
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    name = next(n for n, _ in a.named_parameters())
    for alpha in (0.0, 0.5, 1.0):
        mixed = interpolate_weights(a, b, alpha)
        expected = (1 - alpha) * a.state_dict()[name] + alpha * b.state_dict()[name]
        assert torch.allclose(mixed.state_dict()[name], expected)
    assert not mixed.training


def test_refuses_other_architectures_and_bad_alpha():
    a, b = build_model(ModelConfig.scaled(0.25)), build_model(ModelConfig.scaled(0.5))
    with pytest.raises(ValueError, match="different architectures"):
        interpolate_weights(a, b, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(a, a, 1.5)
