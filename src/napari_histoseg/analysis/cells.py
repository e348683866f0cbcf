"""Cells of a class-label map of any size, block by block: each cell once, with class, centroid, area, outline.

A block is read with a halo wider than the largest cell, its cells are found with
:func:`~napari_histoseg.analysis.instances.cells_from_labels`, and the block keeps the cells whose centroid lies in
its core. A cell smaller than the halo lies whole inside the window of every block that could own it, so it
gets the same pixels, hence the same centroid (compared in exact integer arithmetic), in each of them: exactly
one block owns it. Memory is one window and its instance map at a time; nothing slide-sized is allocated.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours

from ..classes import NON_TUMOR, TUMOR
from .instances import DEFAULT_EDGE_MIN_AREA, DEFAULT_EXPAND, DEFAULT_MIN_AREA, cell_rules, cells_from_labels

log = logging.getLogger(__name__)


class CellExtractionError(ValueError):
    """A label source or setting that cell extraction cannot use."""


@dataclass
class CellTable:
    """Cells as columns. Coordinates are in the pixel frame of the label map they came from (row y, column x).

    ``polygons`` (when asked for) holds one closed outline per cell, (K, 2) float (y, x), first point repeated last.
    """

    id: np.ndarray  # int64, 1..N over the whole map
    cls: np.ndarray  # uint8: 1 tumor, 2 non-tumor
    y: np.ndarray  # float64 centroid row
    x: np.ndarray  # float64 centroid column
    area: np.ndarray  # int64 pixels (interior and boundary ring)
    polygons: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.id.size)

    @classmethod
    def empty(cls, polygons: bool = False) -> CellTable:
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.float64),
            np.zeros(0, np.float64),
            np.zeros(0, np.int64),
            [] if polygons else None,
        )

    @classmethod
    def concat(cls, tables: Iterable[CellTable]) -> CellTable:
        """One table from several (e.g. the per-block tables of a stream)."""
        tables = list(tables)
        if not tables:
            return cls.empty()
        polygons = None
        if all(t.polygons is not None for t in tables):
            polygons = [p for t in tables for p in t.polygons]
        return cls(
            np.concatenate([t.id for t in tables]),
            np.concatenate([t.cls for t in tables]),
            np.concatenate([t.y for t in tables]),
            np.concatenate([t.x for t in tables]),
            np.concatenate([t.area for t in tables]),
            polygons,
        )


@dataclass
class CellProgress:
    """A progress event: one more block done; ``table`` holds the cells that block owns."""

    blocks_done: int
    blocks_total: int
    cells: int
    elapsed_seconds: float
    cells_per_second: float
    eta_seconds: float | None
    table: CellTable = field(repr=False)


@dataclass
class CellResult:
    """The end of an extraction: totals, and the whole table when the sync helper collected it."""

    shape: tuple[int, int]
    cells: int
    counts: dict[str, int]  # tumor / non_tumor cell counts
    areas: dict[str, int]  # tumor / non_tumor cell area in pixels
    blocks: int
    seconds: float
    oversized: int  # owned cells that reached the edge of their window: larger than the halo, maybe miscounted
    settings: dict
    table: CellTable | None = None

    def summary(self) -> dict:
        """JSON-serialisable summary (no table)."""
        return {
            "shape": list(self.shape),
            "cells": self.cells,
            "counts": dict(self.counts),
            "areas_px": dict(self.areas),
            "blocks": self.blocks,
            "seconds": round(self.seconds, 3),
            "cells_per_second": round(self.cells / self.seconds, 1) if self.seconds > 0 else None,
            "oversized_cells": self.oversized,
            "settings": dict(self.settings),
        }


def label_array(source: Any, level: int = 0) -> Any:
    """The 2-D uint8 class-label array behind ``source``.

    ``source`` is a numpy/zarr/dask array, a list of pyramid levels (napari multiscale data), or a
    :class:`~napari_histoseg.io.store.LabelStore` (``level`` picks the pyramid level).
    """
    if hasattr(source, "levels") and hasattr(source, "info"):  # a LabelStore; duck-typed to keep zarr lazy
        levels = source.levels
        if not 0 <= level < len(levels):
            raise CellExtractionError(f"{source.path}: level {level} does not exist (levels 0..{len(levels) - 1})")
        return levels[level]
    if isinstance(source, (list, tuple)):
        if not 0 <= level < len(source):
            raise CellExtractionError(f"level {level} does not exist (levels 0..{len(source) - 1})")
        source = source[level]
    if not hasattr(source, "shape") or not hasattr(source, "__getitem__"):
        source = np.asarray(source)
    if len(source.shape) != 2:
        raise CellExtractionError(f"a class-label map must be 2-D (y, x), got shape {tuple(source.shape)}")
    return source


def iter_cells(
    source: Any,
    *,
    level: int = 0,
    block: int = 2048,
    halo: int = 64,
    min_area: int = DEFAULT_MIN_AREA,
    edge_min_area: int | None = DEFAULT_EDGE_MIN_AREA,
    expand: float = DEFAULT_EXPAND,
    split: bool = True,
    polygons: bool = False,
    tolerance: float = 0.5,
    mpp: float | None = None,
) -> Generator[CellProgress | CellResult, None, CellResult]:
    """Find the cells of a class-label map block by block; yield a :class:`CellProgress` per block, then the result.

    ``halo`` (px) must exceed the largest cell's diameter plus ``expand``; cells that reach the edge of their
    window are counted in ``oversized`` (and warned about) because they may be counted twice or not at all.
    ``polygons`` adds each cell's outline (``skimage.measure.find_contours``, simplified within ``tolerance`` px).
    The per-block tables are only in the events: a consumer that writes them out keeps memory bounded.
    ``min_area``, ``edge_min_area`` (for cells cut by the map's edge) and ``expand`` are the rules of
    ``cells_from_labels``, given at ``instances.RULES_MPP``: with ``mpp`` (microns per pixel of the map) they are
    converted to the map's pixels (``instances.cell_rules``); without it they are taken as pixels.
    """
    labels = label_array(source, level)
    if block < 16:
        raise CellExtractionError(f"block must be at least 16 px, got {block}")
    if halo < 1:
        raise CellExtractionError(f"halo must be at least 1 px, got {halo}")
    height, width = (int(v) for v in labels.shape)
    grid = [(by, bx) for by in range(math.ceil(height / block)) for bx in range(math.ceil(width / block))]
    rules = cell_rules(mpp, min_area=min_area, edge_min_area=edge_min_area, expand=expand)
    rules["split"] = split
    settings = {"block": block, "halo": halo, "mpp": mpp, **rules}

    def window(index: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int], np.ndarray]:
        y0, x0 = index[0] * block, index[1] * block
        core = (y0, x0, min(y0 + block, height), min(x0 + block, width))
        wy0, wx0 = max(0, y0 - halo), max(0, x0 - halo)
        wy1, wx1 = min(height, core[2] + halo), min(width, core[3] + halo)
        return core, (wy0, wx0), np.asarray(labels[wy0:wy1, wx0:wx1])

    start = time.perf_counter()
    next_id = 1
    counts = {"tumor": 0, "non_tumor": 0}
    areas = {"tumor": 0, "non_tumor": 0}
    oversized = 0
    # Read the next window while this one is processed (zarr decoding releases the GIL).
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(window, grid[0]) if grid else None
        for done in range(1, len(grid) + 1):
            core, origin, data = pending.result()
            pending = reader.submit(window, grid[done]) if done < len(grid) else None
            table, n_oversized = _block_cells(data, core, origin, (height, width), rules, polygons, tolerance)
            table.id = np.arange(next_id, next_id + len(table), dtype=np.int64)
            next_id += len(table)
            oversized += n_oversized
            for key, cls in (("tumor", TUMOR), ("non_tumor", NON_TUMOR)):
                counts[key] += int((table.cls == cls).sum())
                areas[key] += int(table.area[table.cls == cls].sum())
            elapsed = time.perf_counter() - start
            rate = (next_id - 1) / elapsed if elapsed > 0 else 0.0
            eta = elapsed / done * (len(grid) - done)
            yield CellProgress(done, len(grid), next_id - 1, elapsed, rate, eta, table)
    if oversized:
        warnings.warn(
            f"{oversized} cells reached the edge of their {halo}-px halo: they are larger than the halo and may be "
            "counted twice or missed; use a larger halo",
            stacklevel=2,
        )
    result = CellResult(
        (height, width), next_id - 1, counts, areas, len(grid), time.perf_counter() - start, oversized, settings
    )
    yield result
    return result


def extract_cells(source: Any, **kwargs) -> CellTable:
    """All cells of ``source`` as one table (keyword arguments as :func:`iter_cells`). Sync helper."""
    return collect_cells(source, **kwargs).table


def collect_cells(source: Any, **kwargs) -> CellResult:
    """Run :func:`iter_cells` to the end and return its result with the whole table attached."""
    tables = []
    result = None
    for event in iter_cells(source, **kwargs):
        if isinstance(event, CellProgress):
            tables.append(event.table)
        else:
            result = event
    result.table = CellTable.concat(tables) if tables else CellTable.empty(kwargs.get("polygons", False))
    return result


def _block_cells(
    data: np.ndarray,
    core: tuple[int, int, int, int],
    origin: tuple[int, int],
    shape: tuple[int, int],
    rules: dict,
    polygons: bool,
    tolerance: float,
) -> tuple[CellTable, int]:
    """The cells a block owns, found in its window ``data`` whose top-left pixel is ``origin``.

    ``rules`` are ``cells_from_labels``' keyword arguments."""
    instances, classes = cells_from_labels(data, **rules)
    n = classes.size - 1
    if n == 0:
        return CellTable.empty(polygons), 0
    flat = instances.ravel()
    inside = np.flatnonzero(flat)
    ids = flat[inside]
    area = np.bincount(ids, minlength=n + 1)
    rows, cols = np.divmod(inside, instances.shape[1])
    # Coordinate sums are integers (exact in float64 up to 2**53): ownership is decided exactly.
    sum_y = np.bincount(ids, weights=rows, minlength=n + 1) + origin[0] * area
    sum_x = np.bincount(ids, weights=cols, minlength=n + 1) + origin[1] * area
    y0, x0, y1, x1 = core
    own = (sum_y >= y0 * area) & (sum_y < y1 * area) & (sum_x >= x0 * area) & (sum_x < x1 * area)
    own[0] = False
    owned = np.flatnonzero(own)
    oversized = int(np.isin(owned, _cut_edge_ids(instances, origin, shape)).sum())
    cy, cx = sum_y[owned] / area[owned], sum_x[owned] / area[owned]
    outlines = _outlines(instances, owned, origin, tolerance) if polygons else None
    table = CellTable(np.zeros(owned.size, np.int64), classes[owned], cy, cx, area[owned].astype(np.int64), outlines)
    return table, oversized


def _cut_edge_ids(instances: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Ids of instances touching a window edge that is not an edge of the whole map (cut by the window)."""
    h, w = instances.shape
    edges = []
    if origin[0] > 0:
        edges.append(instances[0])
    if origin[0] + h < shape[0]:
        edges.append(instances[-1])
    if origin[1] > 0:
        edges.append(instances[:, 0])
    if origin[1] + w < shape[1]:
        edges.append(instances[:, -1])
    return np.unique(np.concatenate(edges)) if edges else np.zeros(0, instances.dtype)


def _outlines(instances: np.ndarray, ids: np.ndarray, origin: tuple[int, int], tolerance: float) -> list[np.ndarray]:
    """Closed outer outline of each cell in ``ids``: (K, 2) float (y, x) in map pixels, counterclockwise in x-y."""
    boxes = ndi.find_objects(instances, max_label=int(ids.max()) if ids.size else 0)
    out = []
    for i in ids:
        sl = boxes[i - 1]
        mask = np.pad(instances[sl] == i, 1).astype(np.float32)
        contours = find_contours(mask, 0.5)
        ring = max(contours, key=len)
        if tolerance > 0:
            ring = approximate_polygon(ring, tolerance)
        if len(ring) < 4:  # degenerate after simplification: keep the full contour
            ring = max(contours, key=len)
        ring = ring + (sl[0].start + origin[0] - 1, sl[1].start + origin[1] - 1)
        # Shoelace in (x, y): make the exterior ring counterclockwise (RFC 7946).
        xs, ys = ring[:, 1], ring[:, 0]
        if np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]) < 0:
            ring = ring[::-1]
        out.append(ring)
    return out
