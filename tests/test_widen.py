"""Net2WiderNet: a doubled ResUNet++ starts from the narrow one's function."""

from __future__ import annotations

import pytest
import torch

from napari_histoseg.model.resunetpp import ModelConfig, build_model
from napari_histoseg.model.widen import widen_twice


def _trained_like(width: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(width))
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("width", [0.25, 0.5])  # 0.25: squeeze-excite bottlenecks clamped at 1 stay 1
def test_widened_network_computes_the_same_logits(width):
    narrow = _trained_like(width)
    wide = widen_twice(narrow)
    assert wide.config.widths == tuple(2 * w for w in narrow.config.widths)
    assert wide.config.bridge == 2 * narrow.config.bridge
    assert sum(p.numel() for p in wide.parameters()) > 3 * sum(p.numel() for p in narrow.parameters())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = narrow(x), wide(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_noise_breaks_the_symmetry_of_the_copies_but_keeps_the_decisions():
    narrow = _trained_like(0.5)
    exact, noisy = widen_twice(narrow), widen_twice(narrow, noise=0.02, seed=1)
    w = noisy.stem.conv[0].weight
    assert not torch.equal(w[0::2], w[1::2])
    assert torch.equal(exact.stem.conv[0].weight[0::2], exact.stem.conv[0].weight[1::2])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        agree = (noisy(x).argmax(1) == narrow(x).argmax(1)).float().mean().item()
    assert agree > 0.95
