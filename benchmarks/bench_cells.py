"""Benchmark: blockwise cell extraction on a real-size class-label map; cells per second and peak memory.

Builds a 20,000 x 20,000 class-label map (zarr on disk, chunk 512, in ``.bench/``, reused when present) block by
block from a few 2048-px tiles of synthetic nuclei like the model's output: ellipses 8-15 px across with a 2-px
boundary-class ring, tumor nuclei in clusters and non-tumor nuclei scattered, about one pair in four touching
(rings in contact), and a tenth of those joined through a gap in their rings (one region that must be split).
The number of nuclei drawn is known, so the count found is checked against it.

Each size runs in its own subprocess; it reports cells/s of `iter_cells` (the table
streamed block by block and dropped, as the CSV/GeoJSON exporters consume it), the peak of Python-tracked
allocations (tracemalloc: numpy arrays included) and the process's peak resident memory. Peak memory must not
grow with the area: compare the two sizes.

Run: ``python benchmarks/bench_cells.py [--sizes 10000 20000] [--block 2048] [--export]``
(``--export`` also times the full slide export: outlines, CSV, GeoJSON and summary, on the largest size).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
TILE = 2000  # divides the default sizes, so every tile is whole and the expected count is exact
N_TILES = 4
MARGIN = 12  # no nucleus within this of a tile edge: tiles placed side by side do not merge nuclei
BACKGROUND, TUMOR, NON_TUMOR, BOUNDARY = 0, 1, 2, 3


def nuclei_tile(seed: int, tile: int = TILE) -> tuple[np.ndarray, int]:
    """A tile of synthetic nuclei and the number drawn (a joined pair counts as two)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((tile, tile), np.uint8)
    taken = np.zeros((tile, tile), bool)
    # Tumor share varies smoothly over the tile: clusters of tumor among scattered non-tumor cells.
    centres = rng.uniform(0, tile, (6, 2))
    rows, cols = np.indices((31, 31)) - 15
    drawn = 0

    def tumor_prob(y: float, x: float) -> float:
        d = np.min(np.hypot(centres[:, 0] - y, centres[:, 1] - x))
        return 0.9 if d < 300 else 0.15

    def draw(y: float, x: float, cls: int) -> np.ndarray | None:
        """Draw one nucleus unless it would overlap another; return its mask in tile coordinates' window."""
        a, b = rng.uniform(4.0, 7.5), rng.uniform(4.0, 7.5)
        t = rng.uniform(0, np.pi)
        iy, ix = int(y), int(x)
        dy, dx = rows + iy - y, cols + ix - x
        u = (dy * np.cos(t) + dx * np.sin(t)) / a
        v = (-dy * np.sin(t) + dx * np.cos(t)) / b
        nucleus = np.hypot(u, v) <= 1.0
        ys, xs = slice(iy - 15, iy + 16), slice(ix - 15, ix + 16)
        if taken[ys, xs][nucleus].any():
            return None
        sub = labels[ys, xs]
        sub[nucleus] = BOUNDARY
        sub[ndi.binary_erosion(nucleus, iterations=2)] = cls  # the 2-px ring is the nucleus minus its erosion
        taken[ys, xs] |= nucleus
        return nucleus

    lo, hi = MARGIN + 15, tile - MARGIN - 15
    for _ in range(40000):
        y, x = rng.uniform(lo, hi, 2)
        cls = TUMOR if rng.random() < tumor_prob(y, x) else NON_TUMOR
        if draw(y, x, cls) is None:
            continue
        drawn += 1
        if rng.random() >= 0.25:
            continue
        # A touching partner: the nearest free spot in a random direction, rings in contact.
        angle = rng.uniform(0, 2 * np.pi)
        for dist in np.arange(7.0, 16.0, 1.0):
            y2, x2 = y + dist * np.sin(angle), x + dist * np.cos(angle)
            if not (lo <= y2 < hi and lo <= x2 < hi):
                break
            if draw(y2, x2, cls) is not None:
                drawn += 1
                if rng.random() < 0.1:  # a gap in both rings where they meet: the interiors join
                    my, mx = (y + y2) / 2, (x + x2) / 2
                    ys, xs = slice(int(my) - 6, int(my) + 7), slice(int(mx) - 6, int(mx) + 7)
                    near = np.hypot(*np.ogrid[int(my) - 6 - my : int(my) + 7 - my, int(mx) - 6 - mx : int(mx) + 7 - mx])
                    near = near <= 1.5
                    patch = labels[ys, xs]
                    patch[near & (patch == BOUNDARY)] = cls
                break
    return labels, drawn


def build_map(path: Path, size: int) -> dict:
    """Write (or reuse) a size x size zarr label map tiled from N_TILES nucleus tiles; return its metadata."""
    import zarr

    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    tiles = [nuclei_tile(seed) for seed in range(N_TILES)]
    array = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(512, 512), dtype="uint8", fill_value=0)
    expected = 0
    n = -(-size // TILE)
    for ty in range(n):
        for tx in range(n):
            labels, drawn = tiles[(ty * 7 + tx * 3) % N_TILES]
            h, w = min(TILE, size - ty * TILE), min(TILE, size - tx * TILE)
            part = labels[:h, :w]
            array[ty * TILE : ty * TILE + h, tx * TILE : tx * TILE + w] = part
            whole = (h, w) == (TILE, TILE)
            expected = expected + drawn if whole and expected is not None else None  # cut tiles: unknown
    meta = {"size": size, "expected_cells": expected}
    meta_path.write_text(json.dumps(meta))
    return meta


def measure(path: Path, block: int, export: bool) -> dict:
    """Run one extraction in this process (called in a subprocess) and report its figures."""
    import zarr

    from napari_histoseg.analysis.cells import CellProgress, iter_cells

    array = zarr.open_array(str(path), mode="r")
    tracemalloc.start()
    start = time.perf_counter()
    cells = 0
    for event in iter_cells(array, block=block):
        if isinstance(event, CellProgress):
            cells = event.cells
        else:
            result = event
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures = {
        "shape": list(array.shape),
        "cells": cells,
        "counts": result.counts,
        "oversized": result.oversized,
        "seconds": round(seconds, 2),
        "cells_per_second": round(cells / seconds),
        "megapixels_per_second": round(array.shape[0] * array.shape[1] / seconds / 1e6, 2),
        "traced_peak_mb": round(traced_peak / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if export:
        figures["export"] = measure_export(array, path, block)
    return figures


def measure_export(array, path: Path, block: int) -> dict:
    """Time the slide exports (outlines + CSV + GeoJSON + summary) through a LabelStore view of the map."""
    from napari_histoseg.jobs.measure import write_slide_outputs

    class _Store:  # the two attributes write_slide_outputs reads from a LabelStore
        def __init__(self):
            self.path = path
            self.levels = [array]
            self.info = {"block": block, "downsample": 1.0, "mpp": 0.5, "settings": {}}

    start = time.perf_counter()
    out = write_slide_outputs(_Store(), path.parent / "export" / path.stem)
    seconds = time.perf_counter() - start
    sizes = {k: round(Path(v).stat().st_size / 2**20, 1) for k, v in out["files"].items()}
    return {"seconds": round(seconds, 1), "cells_per_second": round(out["cells"] / seconds), "files_mb": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000])
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.block, args.export)))
        return
    folder = ROOT / ".bench"
    folder.mkdir(exist_ok=True)
    (folder / "export").mkdir(exist_ok=True)
    report = {}
    for i, size in enumerate(args.sizes):
        path = folder / f"cells_{size}.zarr"
        t = time.perf_counter()
        meta = build_map(path, size)
        build_s = time.perf_counter() - t
        cmd = [sys.executable, __file__, "--child", str(path), "--block", str(args.block)]
        if args.export and i == len(args.sizes) - 1:
            cmd.append("--export")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        figures["expected_cells"] = meta["expected_cells"]
        figures["map_build_seconds"] = round(build_s, 1)
        report[size] = figures
        print(f"{size} x {size}: {json.dumps(figures)}", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
