"""Device selection, autocast policy and model preparation."""

from __future__ import annotations

import contextlib

import pytest
import torch

from napari_histoseg.engine import device as device_module
from napari_histoseg.engine.device import (
    DeviceError,
    autocast_for,
    available_devices,
    cpu_has_fast_bf16,
    prepare_model,
    select_device,
    training_autocast,
)
from napari_histoseg.model.resunetpp import ModelConfig, build_model

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_cpu_always_available():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert available_devices()[-1] == "cpu"


def test_auto_prefers_cuda_then_mps_then_cpu():
    device = select_device("auto")
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert device.type == expected
    assert select_device() == device


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "mps:1", "auto:0", "", "tpu"])
def test_unknown_device_strings(bad):
    with pytest.raises(DeviceError, match="unknown device"):
        select_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_requested_without_cuda(name):
    with pytest.raises(DeviceError, match=rf"'{name}' requested but CUDA is not available.*available: \['cpu'"):
        select_device(name)


@pytest.mark.skipif(HAS_MPS, reason="machine has MPS")
def test_mps_requested_without_mps():
    with pytest.raises(DeviceError, match="'mps' is not available"):
        select_device("mps")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_index_checked():
    assert select_device("cuda:0") == torch.device("cuda", 0)
    assert select_device("cuda").type == "cuda"
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=rf"has {count} CUDA device"):
        select_device(f"cuda:{count}")


@pytest.mark.parametrize("amx", [True, False])
def test_inference_autocast_on_cpu_is_bf16_only_with_bf16_units(monkeypatch, amx):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: amx)
    ctx = autocast_for("cpu")
    assert isinstance(ctx, contextlib.nullcontext) != amx
    with ctx:
        y = torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(2, 3, 3, 3))
    assert y.dtype == (torch.bfloat16 if amx else torch.float32)


def test_bf16_unit_detection_reads_the_cpu_capabilities():
    found = torch.cpu.get_capabilities()
    assert cpu_has_fast_bf16() == bool((found.get("amx_bf16") and found.get("amx_tile")) or found.get("avx512_bf16"))


@pytest.mark.parametrize("amx", [True, False])
def test_training_autocast_on_cpu_is_bf16_only_with_bf16_units(monkeypatch, amx):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: amx)
    model = build_model(ModelConfig.scaled(0.25))
    with training_autocast("cpu"):
        y = model(torch.rand(2, 3, 32, 32))
    assert y.dtype == (torch.bfloat16 if amx else torch.float32)
    y.float().mean().backward()  # gradients reach the fp32 weights in both cases
    assert model.stem.conv[0].weight.grad.dtype == torch.float32


def test_prepare_model_on_cpu():
    model = build_model(ModelConfig.scaled(0.25)).train()
    prepared = prepare_model(model, "cpu")
    assert not prepared.training
    assert prepared.stem.conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for("cpu"):
        y = prepared(x)
    assert y.shape == (2, 4, 32, 32) and y.dtype == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    plain = prepare_model(build_model(ModelConfig.scaled(0.25)), "cpu", channels_last=False)
    assert plain.stem.conv[0].weight.is_contiguous()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.5))
    device = select_device("cuda")
    ref_model = prepare_model(build_model(model.config), "cpu", channels_last=False)
    ref_model.load_state_dict(model.state_dict())
    prepared = prepare_model(model, device)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode(), autocast_for(device):
        y = prepared(x.to(device, memory_format=torch.channels_last))
    assert y.device.type == "cuda"
    assert y.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    with torch.inference_mode():
        ref = ref_model(x)
    # Compare class decisions, the quantity inference uses; bf16 logits differ by a few percent.
    agree = (y.float().cpu().argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.97, agree


def test_prepare_model_compile_wraps_without_compiling_yet():
    model = build_model(ModelConfig.scaled(0.25))
    compiled = prepare_model(model, "cpu", compile=True)
    # torch.compile is lazy: the wrapper exists now, compilation happens on the first call.
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled._orig_mod is model and not model.training
