"""ResUNet++: shapes, parameter count, size errors, config validation."""

from __future__ import annotations

import pytest
import torch

from napari_histoseg.model.resunetpp import (
    InputSizeError,
    ModelConfig,
    ModelConfigError,
    build_model,
    count_parameters,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig.scaled(0.25)).eval()


def test_default_parameter_count_matches_the_paper():
    model = build_model()
    n = count_parameters(model)
    assert 3_800_000 <= n <= 4_400_000, n
    # mean/std are buffers, not weights, and not saved in the state dict.
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


def test_tiny_model_output_shape(tiny):
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        y = tiny(x)
    assert y.shape == (2, 4, 64, 64)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_non_square_and_other_class_count():
    model = build_model(ModelConfig.scaled(0.25, num_classes=3)).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 40, 24)).shape == (1, 3, 40, 24)


def test_each_sample_is_independent_in_eval(tiny):
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        batched = tiny(x)
        single = tiny(x[1:2])
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-4)


def test_channels_last_gives_same_result_and_layout(tiny):
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        ref = tiny(x)
        cl_model = build_model(tiny.config).eval()
        cl_model.load_state_dict(tiny.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        out = cl_model(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_normalisation_uses_config_mean_and_std():
    config = ModelConfig.scaled(0.25, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = build_model(config).eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    # A model with another mean sees other inputs, so gives other outputs from the same weights.
    other = build_model(ModelConfig.scaled(0.25)).eval()
    other.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert not torch.allclose(model(x), other(x))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25)).train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 32, 32)), torch.randint(0, 4, (2, 32, 32)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize(("size", "nearest"), [(250, "248 or 256"), (65, "64 or 72"), (4, "8")])
def test_bad_size_names_size_and_nearest_valid(tiny, size, nearest):
    with pytest.raises(InputSizeError, match=rf"{size}.*multiples of 8.*nearest valid height: {nearest}"):
        tiny(torch.rand(1, 3, size, 64))
    with pytest.raises(ValueError, match=rf"width {size}"):
        tiny(torch.rand(1, 3, 64, size))


def test_bad_rank_or_channels(tiny):
    with pytest.raises(InputSizeError, match=r"\(N, 3, H, W\)"):
        tiny(torch.rand(3, 64, 64))
    with pytest.raises(InputSizeError, match=r"\(1, 4, 64, 64\)"):
        tiny(torch.rand(1, 4, 64, 64))


def test_divisor_follows_depth():
    assert ModelConfig().divisor == 8
    config = ModelConfig(widths=(4, 8, 8, 16, 16), bridge=16)
    assert config.divisor == 16
    model = build_model(config).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 32, 48)).shape == (1, 4, 32, 48)
    with pytest.raises(InputSizeError, match="multiples of 16"):
        model(torch.rand(1, 3, 40, 48))


def test_config_round_trip_and_scaling():
    config = ModelConfig.scaled(0.5, num_classes=3)
    assert config.widths == (8, 16, 32, 64) and config.bridge == 128 and config.num_classes == 3
    d = config.to_dict()
    assert isinstance(d["widths"], list)
    assert ModelConfig.from_dict(d) == config
    assert ModelConfig.scaled(1.0) == ModelConfig()
    assert count_parameters(build_model(ModelConfig.scaled(0.5))) < count_parameters(build_model()) / 3


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"depth": 4}, "unknown model config keys \\['depth'\\]"),
        ({"num_classes": 1}, "num_classes"),
        ({"widths": [16]}, "widths"),
        ({"widths": [16, -2]}, "widths"),
        ({"bridge": 2.5}, "bridge"),
        ({"aspp_rates": [6, 0]}, "aspp_rates"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"widths": "16,32"}, "widths"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ModelConfigError, match=match):
        ModelConfig.from_dict({**ModelConfig().to_dict(), **bad})


def test_scaled_rejects_bad_multiplier():
    with pytest.raises(ModelConfigError, match="multiplier"):
        ModelConfig.scaled(0)
