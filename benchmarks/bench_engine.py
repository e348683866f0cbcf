"""Inference engine against MONAI's ``sliding_window_inference``, on the same random ResUNet++ and real tissue.

Both run tile 256, overlap 0.25, Gaussian blending, batch 8, softmax outputs, no tissue skipping, in this one
invocation; every measurement runs in a fresh child process so its peak resident memory is its own.

- throughput at 4096 x 4096 (default-width model; ``--size`` to change): windows per second of each and the ratio
  at equal precision, with our engine reading the same pixels from memory (equal work), and our engine end-to-end
  from a JPEG BigTIFF into a zarr store. Both engines run the same precision in each comparison: once in fp32 and
  once under the same bf16 autocast (``engine.device.autocast_for``), the latter only where the device has bf16
  units (CUDA, CPUs with AMX or AVX512-BF16): elsewhere bf16 is emulated and says nothing about either engine.
  The ratios print as ``ratio at equal precision (bf16): N.NNx`` and ``(fp32)``, with the slide area each engine
  covers per second (mm^2/s at 0.25 um/px). Our engine's process also gets its glibc allocator tuning
  (``engine.allocator``), which is part of the engine; MONAI runs the same untuned model as it comes;
- peak resident memory at 4096 and 16384 (ours: JPEG BigTIFF -> zarr store; MONAI: in-memory tensor, as it
  requires). The memory runs use a quarter-width model by default to keep the 16384 run short (the model's own
  memory is constant; what grows is the engine's buffers); ``--memory-width 1`` uses the full model;
- on CUDA, windows per second end-to-end from a JPEG pyramid and from synthetic in-memory input.

The tissue is a region of ../shared/data/wsi/tcga-cr-7395-01a-01-ts1.svs tiled up to size.

    python benchmarks/bench_engine.py            # everything
    python benchmarks/bench_engine.py --quick    # 1024 / 2048 px, for a smoke test
    python benchmarks/bench_engine.py --only throughput --size 3072 --json   # JSON of the figures, last line
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
WORK = ROOT / ".bench"
TILE, OVERLAP, BATCH = 256, 0.25, 8
MPP = 0.25  # um per pixel of the tiled region, for the area per second


def tissue_region() -> np.ndarray:
    """A 2048 px tissue region of the real TCGA slide."""
    from napari_histoseg.io.slide import open_slide

    with open_slide(SLIDE) as slide:
        return slide.levels[0][1200:3248, 1000:3048].compute()


def tiled(region: np.ndarray, size: int, y: int = 0, x: int = 0, h: int | None = None, w: int | None = None):
    """The ``size`` x ``size`` image made by repeating ``region`` (or a box of it)."""
    h, w = h or size, w or size
    rows = np.arange(y, y + h) % region.shape[0]
    cols = np.arange(x, x + w) % region.shape[1]
    return region[np.ix_(rows, cols)]


def jpeg_tiff(size: int) -> Path:
    """A JPEG-tiled BigTIFF of ``size`` px built tile by tile (never whole in memory); reused when present."""
    import tifffile

    path = WORK / f"tissue_{size}.tif"
    if path.exists():
        return path
    WORK.mkdir(exist_ok=True)
    region = tissue_region()
    t = 512

    def tiles():
        for y in range(0, size, t):
            for x in range(0, size, t):
                yield tiled(region, size, y, x, t, t)

    tmp = path.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(
            tiles(),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(t, t),
            compression="jpeg",
            compressionargs={"level": 90},
            photometric="rgb",
            resolution=(1e4 / 0.25, 1e4 / 0.25),
            resolutionunit="CENTIMETER",
        )
    os.replace(tmp, path)
    return path


def make_model(width: float):
    import torch

    from napari_histoseg.model.resunetpp import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig() if width == 1 else ModelConfig.scaled(width)
    return build_model(config).eval()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- child processes --------------------------------------------------------------------------------------
def engine_predictor(model, settings):
    """Our engine's block predictor for ``model`` under ``settings`` (device, tile, batch, precision)."""
    from napari_histoseg.engine.device import prepare_model, select_device
    from napari_histoseg.engine.predictor import BlockPredictor

    device = select_device(settings.device)
    prepared = prepare_model(model, device)
    return BlockPredictor(prepared, device, tile=settings.tile, batch_size=settings.batch_size, amp=settings.amp)


def child_ours(size: int, width: float, source: str, device: str, precision: str = "auto") -> dict:
    import torch

    from napari_histoseg.engine.infer import InferenceSettings, run, segment
    from napari_histoseg.engine.resolution import ResolutionPlan
    from napari_histoseg.io.slide import open_slide
    from napari_histoseg.io.store import ArraySink, LabelStore

    # "bf16" and "auto": the engine's autocast (bf16 where the device has it); "fp32": none.
    settings = InferenceSettings(
        tile=TILE,
        overlap=OVERLAP,
        batch_size=BATCH,
        skip_background=False,
        device=device,
        block=2048,
        amp=precision != "fp32",
        cell_typer=False,
    )
    model = make_model(width)
    predictor = engine_predictor(model, settings)
    plan = ResolutionPlan(level=0, factor=1.0, output_mpp=0.25)
    if source == "memory":
        image = tiled(tissue_region(), size)
        sink = ArraySink((size, size))
    else:
        image = open_slide(jpeg_tiff(size)).levels[0]
        sink = LabelStore.create(
            WORK / f"out_{size}.zarr", (size, size), block=settings.block, settings={}, overwrite=True
        )
    baseline = peak_rss_mb()
    torch.set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    result = run(segment(image, predictor, sink, settings, plan))
    seconds = time.perf_counter() - start
    return {"windows": result.windows, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "baseline_mb": baseline}


def child_monai(size: int, width: float, device: str, precision: str = "auto") -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from napari_histoseg.engine.device import autocast_for, select_device

    dev = select_device(device)
    model = make_model(width).to(dev)
    image = torch.from_numpy(tiled(tissue_region(), size)).permute(2, 0, 1)[None].float().div_(255)
    calls = {"windows": 0}

    # "bf16" and "auto": the same autocast as our engine (bf16 where the device has it); "fp32": none.
    autocast = (lambda: autocast_for(dev)) if precision != "fp32" else contextlib.nullcontext

    def predictor(x):
        calls["windows"] += x.shape[0]
        with autocast():  # the same autocast as our engine's BlockPredictor
            logits = model(x)
        return F.softmax(logits.float(), dim=1)

    baseline = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(
            image.to(dev),
            roi_size=(TILE, TILE),
            sw_batch_size=BATCH,
            predictor=predictor,
            overlap=OVERLAP,
            mode="gaussian",
        )
        labels = out[0].argmax(0).to(torch.uint8).cpu().numpy()
    seconds = time.perf_counter() - start
    assert labels.shape == (size, size)
    return {"windows": calls["windows"], "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "baseline_mb": baseline}


def child_gpu_synthetic(size: int) -> dict:
    from napari_histoseg.engine.infer import InferenceSettings, run, segment
    from napari_histoseg.engine.resolution import ResolutionPlan
    from napari_histoseg.io.store import ArraySink

    settings = InferenceSettings(
        tile=TILE, overlap=OVERLAP, batch_size=64, skip_background=False, device="cuda", cell_typer=False
    )
    predictor = engine_predictor(make_model(1), settings)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    run(segment(image[:2048, :2048], predictor, ArraySink((2048, 2048)), settings, ResolutionPlan(0, 1.0, None)))
    start = time.perf_counter()
    result = run(segment(image, predictor, ArraySink((size, size)), settings, ResolutionPlan(0, 1.0, None)))
    return {"windows": result.windows, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def spawn(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--size", type=int, help="throughput image size in px (default 4096; 1024 with --quick)")
    parser.add_argument("--memory-width", type=float, default=0.25, help="model width for the memory runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("throughput", "memory"), help="run one section")
    parser.add_argument("--no-monai-memory", action="store_true", help="memory section: our engine only")
    parser.add_argument("--json", action="store_true", help="print the throughput figures as JSON, last line")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, width, *rest = args.child
        size, width = int(size), float(width)
        if kind == "ours":
            out = child_ours(size, width, *rest)
        elif kind == "monai":
            out = child_monai(size, width, *rest)
        else:
            out = child_gpu_synthetic(size)
        print(json.dumps(out))
        return

    if not SLIDE.exists():
        raise SystemExit(f"{SLIDE} not found: the benchmark needs the shared real data")
    small, large = (1024, 2048) if args.quick else (4096, 16384)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, load {load()}")
    figures = {}
    if args.only != "memory":
        figures = throughput(args.size or small, args.device)
    if args.only != "throughput":
        memory(small, large, args.memory_width, args.device, monai=not args.no_monai_memory)
    if torch.cuda.is_available() and args.only is None:
        gpu(large)
    if args.json:
        print(json.dumps(figures))


def load() -> str:
    """The 1-minute load average over the CPU count: how busy the machine was."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def bf16_units(device: str) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 in hardware, so that a bf16 comparison measures the engines; and why not."""
    import torch

    from napari_histoseg.engine.device import cpu_has_fast_bf16, select_device

    dev = select_device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, ""
        return False, "this GPU has no bf16"
    if dev.type == "cpu" and cpu_has_fast_bf16():
        return True, ""
    return False, f"this {dev.type.upper()} has no bf16 units (no AMX or AVX512-BF16): bf16 would be emulated"


def rate(r: dict) -> float:
    return r["windows"] / r["seconds"]


def area_rate(size: int, r: dict) -> float:
    """Slide area covered per second, mm^2/s, at MPP um per pixel."""
    return size * size * (MPP / 1000) ** 2 / r["seconds"]


def throughput(size: int, device: str) -> dict:
    """Windows per second of both engines at equal precision, and ours end-to-end; returns the figures."""
    print(f"\n== throughput at {size} x {size}, default-width ResUNet++ (random weights) ==")
    has_bf16, why_not = bf16_units(device)
    precisions = ("bf16", "fp32") if has_bf16 else ("fp32",)
    jpeg_tiff(size)
    figures: dict = {"size": size, "device": device, "load_before": load(), "bf16": has_bf16 or why_not}
    rows = {}
    for precision in precisions:
        rows[f"ours in memory, {precision}"] = spawn("ours", str(size), "1", "memory", device, precision)
        rows[f"MONAI sliding_window_inference, {precision}"] = spawn("monai", str(size), "1", device, precision)
    rows["ours JPEG TIFF -> zarr, default precision"] = spawn("ours", str(size), "1", "tiff", device, "auto")
    for name, r in rows.items():
        print(
            f"{name:44s} {r['windows']:6d} windows  {r['seconds']:8.1f} s  {rate(r):6.2f} windows/s  "
            f"{area_rate(size, r):7.4f} mm^2/s"
        )
        figures[name] = {"windows_per_s": rate(r), "mm2_per_s": area_rate(size, r), "seconds": r["seconds"]}
    for precision in ("bf16", "fp32"):
        if precision not in precisions:
            print(f"ratio at equal precision ({precision}): not measured, {why_not}")
            continue
        ratio = rate(rows[f"ours in memory, {precision}"]) / rate(rows[f"MONAI sliding_window_inference, {precision}"])
        figures[f"ratio_{precision}"] = ratio
        print(f"ratio at equal precision ({precision}): {ratio:.2f}x")
    figures["load_after"] = load()
    print(f"load average after: {figures['load_after']}")
    return figures


def memory(small: int, large: int, width: float, device: str, monai: bool = True) -> None:
    print(f"\n== peak resident memory (model width {width}) ==")
    jpeg_tiff(large)
    mem = {}
    for size in (small, large):
        mem[("ours", size)] = spawn("ours", str(size), str(width), "tiff", device)
        if monai:
            mem[("monai", size)] = spawn("monai", str(size), str(width), device)
        for who in ("ours", "monai") if monai else ("ours",):
            r = mem[(who, size)]
            print(
                f"{who:6s} {size:6d} px: peak RSS {r['peak_rss_mb']:8.0f} MB "
                f"(before the run {r['baseline_mb']:6.0f} MB)  {r['windows'] / r['seconds']:6.1f} windows/s"
            )
    for who in ("ours", "monai") if monai else ("ours",):
        ratio = mem[(who, large)]["peak_rss_mb"] / mem[(who, small)]["peak_rss_mb"]
        print(f"{who}: peak RSS at {large} / at {small} = {ratio:.2f}x")


def gpu(large: int) -> None:
    print("\n== GPU ==")
    r = spawn("ours", str(large), "1", "tiff", "cuda")
    print(f"end-to-end from a JPEG pyramid: {r['windows'] / r['seconds']:.0f} windows/s")
    r = spawn("gpu", str(large), "1")
    print(f"synthetic in-memory input:      {r['windows'] / r['seconds']:.0f} windows/s")


if __name__ == "__main__":
    main()
