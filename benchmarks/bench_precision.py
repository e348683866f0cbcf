"""Benchmark of precision: a ResUNet++ training step and forward pass in float32 and in bf16 autocast, one process.

Both settings run on the same model and batch, alternating ``--repeats`` times after a warm-up, and the script
prints the median seconds of each and the float32 / bf16 ratio, with whether this machine's CPU has bf16 units
(``engine.device.cpu_has_fast_bf16``: the engine's choice of autocast there). With ``--compile``, a third
setting: the bf16 training step and forward pass of ``torch.compile``'d copies of the model (its compile time
printed apart), to see whether compiling would pay for training.

Usage (from the repository root)::

    python benchmarks/bench_precision.py [--width 1.0] [--batch-size 8] [--patch 256] [--repeats 3] [--device cpu]
        [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from napari_histoseg.engine.allocator import tune_cpu_allocator
from napari_histoseg.engine.device import cpu_has_fast_bf16, prepare_model, select_device
from napari_histoseg.model.resunetpp import ModelConfig, build_model


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _train_step(model, optimizer, x, y, device, bf16) -> float:
    start = time.perf_counter()
    with _autocast(device, bf16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def _forward(model, x, device, bf16) -> float:
    start = time.perf_counter()
    with _autocast(device, bf16):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd bf16 copies")
    args = parser.parse_args()
    device = select_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # as training and inference jobs do (HISTOSEG_MALLOC_TUNING=0 to measure without)
    torch.manual_seed(0)
    # Memory layouts as training (channels_last only on CUDA: see training.train) and inference (prepare_model) use.
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = build_model(ModelConfig.scaled(args.width)).to(device, memory_format=layout).train()
    inference = prepare_model(copy.deepcopy(model), device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-6)
    x = torch.rand(args.batch_size, 3, args.patch, args.patch, device=device)
    y = torch.randint(0, 4, (args.batch_size, args.patch, args.patch), device=device)
    x_train, x_infer = x.to(memory_format=layout), x.to(memory_format=torch.channels_last)
    times: dict[tuple[str, bool | str], list[float]] = {(k, b): [] for k in ("train", "forward") for b in (False, True)}
    for bf16 in (False, True):  # warm-up: allocation, oneDNN kernel selection
        _train_step(model, optimizer, x_train, y, device, bf16)
        _forward(inference, x_infer, device, bf16)
    compiled = {}
    if args.compile:
        compiled = {"train": torch.compile(model), "forward": torch.compile(inference)}
        first = _train_step(compiled["train"], optimizer, x_train, y, device, True)
        first += _forward(compiled["forward"], x_infer, device, True)
        print(f"torch.compile: first training step and forward pass {first:.1f} s (compilation)")
        times.update({("train", "compiled"): [], ("forward", "compiled"): []})
    for _ in range(args.repeats):
        for bf16 in (False, True):
            times["train", bf16].append(_train_step(model, optimizer, x_train, y, device, bf16))
            times["forward", bf16].append(_forward(inference, x_infer, device, bf16))
        if compiled:
            times["train", "compiled"].append(_train_step(compiled["train"], optimizer, x_train, y, device, True))
            times["forward", "compiled"].append(_forward(compiled["forward"], x_infer, device, True))
    print(
        f"ResUNet++ width {args.width:g}, batch {args.batch_size} @ {args.patch} px on {device}; "
        f"CPU bf16 units: {cpu_has_fast_bf16()}; median of {args.repeats}"
    )
    for kind in ("train", "forward"):
        fp32, bf16 = statistics.median(times[kind, False]), statistics.median(times[kind, True])
        line = f"{kind:8s} fp32 {fp32:6.2f} s   bf16 {bf16:6.2f} s   fp32/bf16 {fp32 / bf16:4.2f}x"
        if compiled:
            both = statistics.median(times[kind, "compiled"])
            line += f"   compiled bf16 {both:6.2f} s   bf16/compiled {bf16 / both:4.2f}x"
        print(line)


if __name__ == "__main__":
    main()
