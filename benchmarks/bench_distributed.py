"""Single process against dask.distributed ``local:2`` on the same real-tissue slide region, in one invocation.

Prints windows per second of each and their ratio, and the scheduler's overhead per block (the same number of
no-op tasks submitted and gathered the same way). The slide is a JPEG BigTIFF tiled from a real region of
../shared/data/wsi/tcga-cr-7395-01a-01-ts1.svs (built by bench_engine.py's helper).

    python benchmarks/bench_distributed.py [--size 2048] [--width 1.0] [--block 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_engine import jpeg_tiff

from napari_histoseg.engine.distributed import connect, segment_slide_distributed
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import segment_slide
from napari_histoseg.io.slide import open_slide
from napari_histoseg.io.store import LabelStore
from napari_histoseg.model.checkpoint import card_for, load_checkpoint, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model


def _noop(index):
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument("--block", type=int, default=512)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    torch.manual_seed(0)
    model = build_model(ModelConfig() if args.width == 1 else ModelConfig.scaled(args.width))
    checkpoint = save_checkpoint(tmp / "random", model, card_for(model, mpp=0.25))
    model, card = load_checkpoint(checkpoint)
    settings = InferenceSettings(block=args.block, skip_background=False, batch_size=8, cell_typer=False)
    slide_path = jpeg_tiff(args.size)
    print(f"slide {slide_path.name}: {args.size} x {args.size}, block {args.block}, model width {args.width}")

    with open_slide(slide_path) as slide:
        start = time.perf_counter()
        single = run(segment_slide(slide, model, card, tmp / "single.zarr", settings))
        single_s = time.perf_counter() - start

        client = connect("local:2")
        client.wait_for_workers(2)
        blocks = single.blocks_total
        start = time.perf_counter()
        client.gather(client.map(_noop, range(blocks), pure=False))
        overhead = (time.perf_counter() - start) / blocks
        start = time.perf_counter()
        dist = run(segment_slide_distributed(slide, checkpoint, tmp / "dist.zarr", settings, client))
        dist_s = time.perf_counter() - start
        client.close()
        client.cluster.close()

    same = (LabelStore.open(tmp / "single.zarr").levels[0][:] == LabelStore.open(tmp / "dist.zarr").levels[0][:]).all()
    single_rate, dist_rate = single.windows / single_s, dist.windows / dist_s
    print(f"single process : {single.windows} windows in {single_s:7.1f} s = {single_rate:6.2f} windows/s")
    print(f"local:2        : {dist.windows} windows in {dist_s:7.1f} s = {dist_rate:6.2f} windows/s (incl. model load)")
    print(f"ratio local:2 / single: {dist_rate / single_rate:.2f}x")
    print(f"scheduler overhead per block (no-op task round trip): {overhead * 1e3:.1f} ms over {blocks} blocks")
    print(f"outputs identical: {bool(same)}")


if __name__ == "__main__":
    main()
