"""Test-time flips: logits averaged over the four flips of the input, lined up with it, in every job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from _trainsets import write_set
from napari_histoseg.cli import main
from napari_histoseg.engine.flips import FlipAveraged
from napari_histoseg.engine.infer import InferenceSettings
from napari_histoseg.engine.jobs import make_predictor
from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model

torch.set_num_threads(1)


class RampModel(nn.Module):
    """Logits that depend on position (a left-to-right ramp for class 1) and on the input (class 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig.scaled(0.25)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w).expand(n, h, w)
        bright = x.mean(dim=1)
        return torch.stack([torch.zeros_like(ramp), ramp, bright, -bright], dim=1)


def test_outputs_are_flipped_back_and_averaged_in_one_batch():
    x = torch.rand(2, 3, 8, 12)
    inner = RampModel()
    out = FlipAveraged(inner)(x)
    assert inner.calls == [(8, 3, 8, 12)]  # the four flips of the batch of 2, one forward
    # The ramp's horizontal flips cancel: left and right halves average to 0.5 everywhere.
    assert torch.allclose(out[:, 1], torch.full((2, 8, 12), 0.5))
    # A per-pixel function of the input is unchanged by flipping there and back.
    assert torch.allclose(out[:, 2], x.mean(dim=1), atol=1e-6)
    assert FlipAveraged(inner).config is inner.config


def test_a_real_network_gets_the_mean_of_its_flipped_predictions():
    torch.manual_seed(0)
    net = build_model(ModelConfig.scaled(0.25)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = sum(net(x.flip(d)).flip(d) if d else net(x) for d in ((), (-1,), (-2,), (-2, -1))) / 4
        assert torch.allclose(FlipAveraged(net)(x), expected, atol=1e-5)
        assert not torch.allclose(net(x), expected, atol=1e-3)  # the test would see a missing average


def test_engine_settings_record_and_apply_the_flips():
    settings = InferenceSettings(test_time_flips=True, device="cpu")
    assert settings.result_settings()["test_time_flips"] is True  # a resumed run must match it
    assert InferenceSettings().result_settings()["test_time_flips"] is False
    predictor = make_predictor(RampModel(), settings)
    assert isinstance(predictor.model, FlipAveraged)
    assert not isinstance(make_predictor(RampModel(), InferenceSettings(device="cpu")).model, FlipAveraged)


@pytest.mark.parametrize("flag", [[], ["--tta"]])
def test_evaluate_cli_reports_whether_flips_were_used(tmp_path, capsys, flag):
    data_dir = write_set(tmp_path / "data", n=2, size=64)
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    ckpt = save_checkpoint(tmp_path / "m", model, card_for(model, mpp=0.25))
    assert main(["evaluate", str(data_dir), "--model", str(ckpt), "--device", "cpu", "--json", *flag]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["test_time_flips"] is bool(flag)
    assert np.isfinite(result["metrics"]["dice"][0])
