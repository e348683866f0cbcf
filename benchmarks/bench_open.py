"""Benchmark: open a 50,000 x 50,000 pyramidal JPEG BigTIFF through the core and through the napari reader.

Builds the slide once (tile by tile from a generator, never whole in memory) by mirror-tiling a real H&E region
of the shipped CMU-1 sample, into ``.bench/`` (reused when present). Then prints the time to open it with
``open_slide`` and with the napari reader (``get_reader(path)(path)``), and the bytes read while opening:
every byte read from the file (header, IFDs, tile offsets) and the pixel data (compressed tile bytes) per
pyramid level, counted by instrumenting tifffile's file handle and zarr store. Target: under 0.5 s, and no
full-resolution (level 0) pixels read.

Run: ``python benchmarks/bench_open.py [--size 50000] [--repeats 5]``. The OS page cache is warm (the file was
just written or opened before); the first in-process open includes zarr/imagecodecs first-use costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import tifffile
import tifffile.zarr

from napari_histoseg._napari.sample_data import sample_path
from napari_histoseg.io.slide import open_slide

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 2048  # side of the real region; level k repeats a (2 * PERIOD / 2**k) mirrored period
MPP = 0.499


def level_shapes(size: int, lowest: int = 1024) -> list[tuple[int, int]]:
    shapes = [(size, size)]
    while max(shapes[-1]) > lowest:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def mirrored_periods(n_levels: int) -> list[np.ndarray]:
    """The real region mirrored to a seamless 2P x 2P period, and its 2x2-mean downsamplings per level."""
    region = tifffile.imread(sample_path(), series=0)[800 : 800 + PERIOD, 100 : 100 + PERIOD]
    top = np.concatenate([region, region[:, ::-1]], axis=1)
    period = np.concatenate([top, top[::-1]], axis=0)
    periods = [period]
    for _ in range(n_levels - 1):
        p = periods[-1].astype(np.float32)
        h, w = p.shape[0] // 2, p.shape[1] // 2
        periods.append((p.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8))
    return periods


def tiles(period: np.ndarray, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """Tiles of the periodic image in row-major order (edge tiles are full size, as TIFF stores them)."""
    ph, pw = period.shape[:2]
    for y in range(0, shape[0], tile):
        rows = np.arange(y, y + tile) % ph
        for x in range(0, shape[1], tile):
            yield period[np.ix_(rows, np.arange(x, x + tile) % pw)]


def build(path: Path, size: int, tile: int) -> None:
    shapes = level_shapes(size)
    periods = mirrored_periods(len(shapes))
    partial = path.with_suffix(".partial")
    options = {"tile": (tile, tile), "compression": "jpeg", "photometric": "rgb", "dtype": np.uint8, "maxworkers": 2}
    start = time.perf_counter()
    with tifffile.TiffWriter(partial, bigtiff=True) as tw:
        for k, (shape, period) in enumerate(zip(shapes, periods, strict=True)):
            extra = (
                {"subifds": len(shapes) - 1, "resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
                if k == 0
                else {"subfiletype": 1}
            )
            tw.write(tiles(period, shape, tile), shape=(*shape, 3), **options, **extra)
            print(f"  wrote level {k} {shape[0]}x{shape[1]} ({time.perf_counter() - start:.0f} s)", flush=True)
    partial.rename(path)


class _CountingFile:
    """Forwards to a file object, counting the bytes read."""

    def __init__(self, fh, counter: Counter) -> None:
        self._fh, self._counter = fh, counter

    def read(self, *args):
        data = self._fh.read(*args)
        self._counter["file_bytes"] += len(data)
        return data

    def readinto(self, buffer):
        n = self._fh.readinto(buffer)
        self._counter["file_bytes"] += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self._fh, name)


@contextmanager
def count_reads() -> Iterator[Counter]:
    """Count file bytes read and tile reads (chunks and compressed bytes, per level)."""
    counter: Counter = Counter()
    original_open = tifffile.FileHandle.open
    original_get = tifffile.zarr.ZarrTiffStore.get

    def open_counting(self) -> None:
        original_open(self)
        if self._fh is not None and not isinstance(self._fh, _CountingFile):
            self._fh = _CountingFile(self._fh, counter)

    async def get_counting(self, key, *args, **kwargs):
        name = key.rsplit("/", 1)[-1]
        if not name.startswith((".z", "zarr.json")):
            level = key.split("/", 1)[0] if "/" in key else "0"
            counter[f"level{level}_tiles"] += 1
            counter[f"level{level}_bytes"] += int(self._parse_key(key)[4] or 0)
        return await original_get(self, key, *args, **kwargs)

    with (
        mock.patch.object(tifffile.FileHandle, "open", open_counting),
        mock.patch.object(tifffile.zarr.ZarrTiffStore, "get", get_counting),
    ):
        yield counter


def time_open(label: str, open_once, repeats: int) -> dict:
    with count_reads() as counter:
        start = time.perf_counter()
        result = open_once()
        first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        open_once()
        times.append(time.perf_counter() - start)
    pixel_bytes = sum(v for k, v in counter.items() if k.endswith("_bytes") and k.startswith("level"))
    levels = sorted({k.split("_")[0] for k in counter if k.startswith("level")})
    report = {
        "what": label,
        "first_s": round(first, 4),
        "median_s": round(statistics.median(times), 4) if times else None,
        "file_bytes_read": counter["file_bytes"],
        "pixel_bytes_read": pixel_bytes,
        "tiles_read": {lv: counter[f"{lv}_tiles"] for lv in levels},
        "level0_tiles_read": counter["level0_tiles"],
    }
    print(
        f"{label:<28} first {first * 1000:7.1f} ms  median {report['median_s'] * 1000:7.1f} ms  "
        f"file bytes read {counter['file_bytes']:>9,}  pixel bytes {pixel_bytes:>7,}  tiles {report['tiles_read']}"
    )
    return report | {"_result": result}


_FRESH = """
import sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
result = {call}
t2 = time.perf_counter()
print(f"{{t1 - t0:.4f}} {{t2 - t1:.4f}}")
"""


def fresh_process(label: str, imports: str, call: str, path: Path) -> dict:
    """Time import and first open in a new Python process (no warm-up from earlier opens)."""
    code = _FRESH.format(imports=imports, call=call.format(path=str(path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import_s, open_s = (float(v) for v in out.split())
    print(f"{label:<28} new process: import {import_s * 1000:7.1f} ms, first open {open_s * 1000:7.1f} ms")
    return {"what": label, "fresh_import_s": import_s, "fresh_first_open_s": open_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="level-0 side in pixels")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"he-{args.size}-jpeg-t{args.tile}.btf"
    if path.exists():
        print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB)")
    else:
        print(f"building {path} ...")
        build(path, args.size, args.tile)
        print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB)")

    reports = [time_open("core open_slide", lambda: open_slide(path), args.repeats)]
    slide = reports[0].pop("_result")
    print(
        f"  levels: {[tuple(lv.shape[:2]) for lv in slide.levels]}, chunks {slide.levels[0].chunksize[:2]}, "
        f"mpp {slide.mpp[0]}"
    )
    try:
        from napari_histoseg._napari.reader import get_reader
    except ImportError as exc:  # napari missing
        print(f"napari reader skipped: {exc}")
    else:
        reports.append(time_open("napari reader", lambda: get_reader(str(path))(str(path)), args.repeats))
        reports[-1].pop("_result")

    try:  # the whole napari path, without Qt: npe2 dispatch, layer creation, first slice of the view
        from napari.components import ViewerModel
        from napari.plugins import _initialize_plugins

        _initialize_plugins()
        viewer = ViewerModel()

        def open_in_viewer():
            viewer.layers.clear()
            return viewer.open(str(path), plugin="napari-histoseg")

        reports.append(time_open("napari ViewerModel.open", open_in_viewer, args.repeats))
        layer = reports[-1].pop("_result")[0]
        print(f"  layer: multiscale {layer.multiscale}, scale {tuple(layer.scale)}, shown level {layer.data_level}")
    except ImportError as exc:
        print(f"napari ViewerModel skipped: {exc}")

    fresh = [
        fresh_process(
            "core open_slide", "from napari_histoseg.io.slide import open_slide", "open_slide({path!r})", path
        ),
        fresh_process(
            "napari reader",
            "from napari_histoseg._napari.reader import get_reader",
            "get_reader({path!r})({path!r})",
            path,
        ),
    ]

    from napari_histoseg.analysis.tissue import tissue_mask

    start = time.perf_counter()
    mask, downsample = tissue_mask(slide)
    print(
        f"tissue mask {mask.shape} (downsample {downsample:g}) in {time.perf_counter() - start:.2f} s, "
        f"tissue {mask.mean():.0%}"
    )

    core_and_reader = [r for r in reports if r["what"] in ("core open_slide", "napari reader")]
    ok = all(r["first_s"] < 0.5 for r in core_and_reader)
    ok = ok and all(r["level0_tiles_read"] == 0 for r in reports)
    ok = ok and all(r["fresh_first_open_s"] < 0.5 for r in fresh)
    print(f"target (core and reader < 0.5 s, no level-0 pixels read anywhere): {'MET' if ok else 'NOT MET'}")
    print(json.dumps({"file": str(path), "file_size": path.stat().st_size, "results": reports, "fresh_process": fresh}))


if __name__ == "__main__":
    main()
