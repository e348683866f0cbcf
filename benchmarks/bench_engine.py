"""Inference engine against MONAI's ``sliding_window_inference``, on the same random ResUNet++ and real tissue.

Both run tile 256, overlap 0.25, Gaussian blending, batch 8, softmax outputs, no tissue skipping, in this one
invocation; every measurement runs in a fresh child process so its peak resident memory is its own.

- throughput at 4096 x 4096 (default-width model): windows per second of each and the ratio, with our engine
  reading the same pixels from memory (equal work) and end-to-end from a JPEG BigTIFF into a zarr store;
- peak resident memory at 4096 and 16384 (ours: JPEG BigTIFF -> zarr store; MONAI: in-memory tensor, as it
  requires). The memory runs use a quarter-width model by default to keep the 16384 run short (the model's own
  memory is constant; what grows is the engine's buffers); ``--memory-width 1`` uses the full model;
- on CUDA, windows per second end-to-end from a JPEG pyramid and from synthetic in-memory input.

The tissue is a region of ../shared/data/wsi/tcga-cr-7395-01a-01-ts1.svs tiled up to size.

    python benchmarks/bench_engine.py            # everything
    python benchmarks/bench_engine.py --quick    # 1024 / 2048 px, for a smoke test
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


def tissue_region() -> np.ndarray:
    """A 2048 px tissue region of the real TCGA slide."""
    from napari_histoseg.io.slide import open_slide

    with open_slide(SLIDE) as slide:
        return slide.read_region(0, 1200, 1000, 2048, 2048)


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
def child_ours(size: int, width: float, source: str, device: str) -> dict:
    import torch

    from napari_histoseg.engine.infer import InferenceSettings, run, segment
    from napari_histoseg.engine.jobs import make_predictor
    from napari_histoseg.engine.resolution import ResolutionPlan
    from napari_histoseg.io.slide import open_slide
    from napari_histoseg.io.store import ArraySink, LabelStore

    settings = InferenceSettings(
        tile=TILE, overlap=OVERLAP, batch_size=BATCH, skip_background=False, device=device, block=2048
    )
    model = make_model(width)
    predictor = make_predictor(model, settings)
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


def child_monai(size: int, width: float, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from napari_histoseg.engine.device import select_device

    dev = select_device(device)
    model = make_model(width).to(dev)
    image = torch.from_numpy(tiled(tissue_region(), size)).permute(2, 0, 1)[None].float().div_(255)
    calls = {"windows": 0}

    def predictor(x):
        calls["windows"] += x.shape[0]
        return F.softmax(model(x), dim=1)

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
    from napari_histoseg.engine.jobs import make_predictor
    from napari_histoseg.engine.resolution import ResolutionPlan
    from napari_histoseg.io.store import ArraySink

    settings = InferenceSettings(tile=TILE, overlap=OVERLAP, batch_size=64, skip_background=False, device="cuda")
    predictor = make_predictor(make_model(1), settings)
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
    parser.add_argument("--memory-width", type=float, default=0.25, help="model width for the memory runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("throughput", "memory"), help="run one section")
    parser.add_argument("--no-monai-memory", action="store_true", help="memory section: our engine only")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, width, *rest = args.child
        size, width = int(size), float(width)
        if kind == "ours":
            out = child_ours(size, width, rest[0], rest[1])
        elif kind == "monai":
            out = child_monai(size, width, rest[0])
        else:
            out = child_gpu_synthetic(size)
        print(json.dumps(out))
        return

    if not SLIDE.exists():
        raise SystemExit(f"{SLIDE} not found: the benchmark needs the shared real data")
    small, large = (1024, 2048) if args.quick else (4096, 16384)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.only != "memory":
        throughput(small, args.device)
    if args.only != "throughput":
        memory(small, large, args.memory_width, args.device, monai=not args.no_monai_memory)
    if torch.cuda.is_available() and args.only is None:
        gpu(large)


def throughput(small: int, device: str) -> None:
    print(f"\n== throughput at {small} x {small}, default-width ResUNet++ (random weights) ==")
    jpeg_tiff(small)
    rows = {
        "ours (in memory)": spawn("ours", str(small), "1", "memory", device),
        "ours (JPEG TIFF -> zarr)": spawn("ours", str(small), "1", "tiff", device),
        "MONAI sliding_window_inference": spawn("monai", str(small), "1", device),
    }
    for name, r in rows.items():
        print(
            f"{name:34s} {r['windows']:6d} windows  {r['seconds']:8.1f} s  {r['windows'] / r['seconds']:6.2f} windows/s"
        )
    monai_rate = rows["MONAI sliding_window_inference"]["windows"] / rows["MONAI sliding_window_inference"]["seconds"]
    for name in ("ours (in memory)", "ours (JPEG TIFF -> zarr)"):
        r = rows[name]
        print(f"ratio {name} / MONAI: {r['windows'] / r['seconds'] / monai_rate:.2f}x")
    monai_s = rows["MONAI sliding_window_inference"]["seconds"]
    print(f"wall time to the labels, ours (in memory) / MONAI: {rows['ours (in memory)']['seconds'] / monai_s:.2f}x")


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
