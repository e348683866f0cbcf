"""Pick the compute device and precision, and prepare a model for inference on it."""

from __future__ import annotations

import contextlib
import logging
import re

import torch
from torch import nn

from .allocator import tune_cpu_allocator
from .flips import FlipAveraged

logger = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """A requested device is not valid or not available on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Devices usable here, best first (e.g. ``["cuda:0", "cuda:1", "cpu"]``)."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        devices.append("mps")
    return [*devices, "cpu"]


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """The device to compute on.

    ``"auto"`` picks CUDA, then Apple MPS, then CPU. An explicit ``"cuda"``, ``"cuda:1"``, ``"mps"`` or
    ``"cpu"`` is checked and raises :class:`DeviceError` naming what is available when it is not.
    """
    text = str(preference).strip().lower()
    match = _DEVICE_RE.match(text)
    if not match or (match.group(2) is not None and match.group(1) in ("auto", "cpu", "mps")):
        raise DeviceError(f"unknown device {preference!r}; use 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise DeviceError(f"device 'mps' is not available here; available: {available_devices()}")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {text!r} requested but CUDA is not available (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); available: {available_devices()}"
        )
    count = torch.cuda.device_count()
    i = torch.cuda.current_device() if index is None else int(index)
    if i >= count:
        raise DeviceError(f"device {text!r} does not exist: this machine has {count} CUDA device(s) (0..{count - 1})")
    return torch.device("cuda", i)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: AMX tiles (Intel Xeon Sapphire Rapids and later) or
    AVX512-BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake).

    Only there is bf16 autocast faster than fp32 on a CPU (by about 2.5x for a training step; the timings are in
    docs/tuning-log.md, "Precision").
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # torch < 2.6
        return False
    found = capabilities()
    return bool(found.get("amx_bf16") and found.get("amx_tile")) or bool(found.get("avx512_bf16"))


def _bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager | None:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return None


def training_autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for training steps: bf16 autocast on CUDA with bf16 and on CPUs with bf16 units, else none."""
    return _bf16_autocast(torch.device(device)) or contextlib.nullcontext()


def autocast_for(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for inference: bf16 autocast on CUDA (fp16 where bf16 is unsupported) and on CPUs with
    bf16 units (:func:`cpu_has_fast_bf16`).

    Elsewhere fp32: on a CPU without them bf16 is slower than fp32, and MPS gains little. Where it is used, bf16
    barely moves the scores (docs/tuning-log.md, "Precision").
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16)
    return _bf16_autocast(device) or contextlib.nullcontext()


def prepare_model(
    model: nn.Module,
    device: str | torch.device,
    *,
    channels_last: bool = True,
    compile: bool = False,
    test_time_flips: bool = False,
) -> nn.Module:
    """Model ready for inference: eval mode, on ``device``, channels_last, optionally ``torch.compile``-d.

    With ``test_time_flips`` it is wrapped in :class:`~napari_histoseg.engine.flips.FlipAveraged`.

    Inputs should then be passed as ``x.to(device, memory_format=torch.channels_last)`` to avoid conversions.
    """
    device = torch.device(device)
    if device.type == "cpu":
        tune_cpu_allocator()
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # dynamic=False: windows have one fixed size, so one specialised graph is fastest.
        model = torch.compile(model, dynamic=False)
    return FlipAveraged(model) if test_time_flips else model
