"""Tumor cellularity: the share of tumor cells among all cells, for a slide, for drawn regions, and as a map.

Both measures are given: by count (tumor cells / all cells) and by area (tumor-cell area / all cell area).
Inputs are cell tables (:class:`~napari_histoseg.analysis.cells.CellTable`) in the pixel frame of their label map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import points_in_poly

from ..classes import NON_TUMOR, TUMOR
from .cells import CellTable, collect_cells


class RegionError(ValueError):
    """A region (polygon) that cannot be measured."""


@dataclass(frozen=True)
class Cellularity:
    """Tumor and non-tumor cell counts and areas (label-map pixels) with the two cellularity ratios."""

    tumor_cells: int
    non_tumor_cells: int
    tumor_area_px: int
    non_tumor_area_px: int
    mpp: float | None = None  # microns per label-map pixel, for the areas in square microns

    @property
    def cells(self) -> int:
        return self.tumor_cells + self.non_tumor_cells

    @property
    def by_count(self) -> float:
        """Tumor cells / all cells; NaN without cells."""
        return self.tumor_cells / self.cells if self.cells else math.nan

    @property
    def by_area(self) -> float:
        """Tumor-cell area / all cell area; NaN without cells."""
        total = self.tumor_area_px + self.non_tumor_area_px
        return self.tumor_area_px / total if total else math.nan

    @classmethod
    def of(cls, table: CellTable, mpp: float | None = None, where: np.ndarray | None = None) -> Cellularity:
        """Cellularity of the cells of ``table`` (only those where the boolean ``where`` is true, if given)."""
        cls_col, area = table.cls, table.area
        if where is not None:
            cls_col, area = cls_col[where], area[where]
        tumor, non_tumor = cls_col == TUMOR, cls_col == NON_TUMOR
        return cls(int(tumor.sum()), int(non_tumor.sum()), int(area[tumor].sum()), int(area[non_tumor].sum()), mpp)

    def to_dict(self) -> dict:
        """JSON-serialisable (NaN ratios become None)."""
        d = {
            "cells": self.cells,
            "tumor_cells": self.tumor_cells,
            "non_tumor_cells": self.non_tumor_cells,
            "cellularity_by_count": _finite(self.by_count),
            "cellularity_by_area": _finite(self.by_area),
            "tumor_area_px": self.tumor_area_px,
            "non_tumor_area_px": self.non_tumor_area_px,
        }
        if self.mpp:
            d["tumor_area_um2"] = round(self.tumor_area_px * self.mpp**2, 3)
            d["non_tumor_area_um2"] = round(self.non_tumor_area_px * self.mpp**2, 3)
        return d

    def text(self) -> str:
        """One line for a readout, e.g. ``tumor cellularity 62.5% of 40 cells (58.1% by area)``."""
        if not self.cells:
            return "no cells"
        return (
            f"tumor cellularity {100 * self.by_count:.1f}% of {self.cells:,} cells "
            f"({self.tumor_cells:,} tumor, {self.non_tumor_cells:,} non-tumor; {100 * self.by_area:.1f}% by area)"
        )


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def in_region(table: CellTable, polygon: np.ndarray) -> np.ndarray:
    """Which cells have their centroid inside ``polygon`` ((K, 2) vertices, (y, x) in the table's pixel frame)."""
    polygon = np.asarray(polygon, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise RegionError(f"a region must be a polygon of at least 3 (y, x) vertices, got shape {polygon.shape}")
    if not len(table):
        return np.zeros(0, bool)
    (ymin, xmin), (ymax, xmax) = polygon.min(0), polygon.max(0)
    near = np.flatnonzero((table.y >= ymin) & (table.y <= ymax) & (table.x >= xmin) & (table.x <= xmax))
    inside = np.zeros(len(table), bool)
    if near.size:
        inside[near] = points_in_poly(np.column_stack([table.y[near], table.x[near]]), polygon)
    return inside


def region_cellularity(table: CellTable, regions: Sequence[np.ndarray], mpp: float | None = None) -> list[Cellularity]:
    """Cellularity of the cells whose centroid lies in each polygon of ``regions`` ((y, x) map pixels)."""
    return [Cellularity.of(table, mpp, in_region(table, polygon)) for polygon in regions]


class CellularityGrid:
    """A coarse map of cellularity: counts and areas of tumor / non-tumor cells per ``cell``-px grid square.

    Feed it cell tables (a whole one, or the per-block tables of a stream) with :meth:`add`; memory is the grid.
    Grid square (i, j) covers map pixels [i * cell, (i + 1) * cell) x [j * cell, (j + 1) * cell).
    """

    def __init__(self, shape: tuple[int, int], cell: int = 256):
        if cell < 1:
            raise ValueError(f"grid cell size must be at least 1 px, got {cell}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.cell = int(cell)
        self.grid_shape = (-(-self.shape[0] // cell), -(-self.shape[1] // cell))
        # [tumor count, non-tumor count, tumor area, non-tumor area] per square.
        self.sums = np.zeros((4, *self.grid_shape), np.int64)

    def add(self, table: CellTable) -> None:
        if not len(table):
            return
        gy = np.clip((table.y // self.cell).astype(np.int64), 0, self.grid_shape[0] - 1)
        gx = np.clip((table.x // self.cell).astype(np.int64), 0, self.grid_shape[1] - 1)
        flat = gy * self.grid_shape[1] + gx
        size = self.grid_shape[0] * self.grid_shape[1]
        for k, (cls, weights) in enumerate(
            ((TUMOR, None), (NON_TUMOR, None), (TUMOR, table.area), (NON_TUMOR, table.area))
        ):
            sel = table.cls == cls
            w = None if weights is None else weights[sel]
            self.sums[k] += np.bincount(flat[sel], weights=w, minlength=size).astype(np.int64).reshape(self.grid_shape)

    def cells(self) -> np.ndarray:
        """Cells per square."""
        return self.sums[0] + self.sums[1]

    def by_count(self) -> np.ndarray:
        """Tumor cells / all cells per square, float32; NaN where a square has no cells."""
        total = self.cells()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, self.sums[0] / total, np.nan).astype(np.float32)

    def by_area(self) -> np.ndarray:
        """Tumor-cell area / all cell area per square, float32; NaN where a square has no cells."""
        total = self.sums[2] + self.sums[3]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, self.sums[2] / total, np.nan).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-serialisable map (rows of floats rounded to 4 places, None where no cells)."""

        def rows(a: np.ndarray) -> list:
            return [[None if not math.isfinite(v) else round(float(v), 4) for v in row] for row in a]

        return {
            "cell_px": self.cell,
            "shape_px": list(self.shape),
            "grid_shape": list(self.grid_shape),
            "by_count": rows(self.by_count()),
            "by_area": rows(self.by_area()),
            "cells": self.cells().tolist(),
        }


def cellularity_map(table: CellTable, shape: tuple[int, int], cell: int = 256, by: str = "count") -> np.ndarray:
    """Cellularity per ``cell``-px square of a map of ``shape``, by ``"count"`` or ``"area"`` (NaN: no cells)."""
    if by not in ("count", "area"):
        raise ValueError(f"by must be 'count' or 'area', got {by!r}")
    grid = CellularityGrid(shape, cell)
    grid.add(table)
    return grid.by_count() if by == "count" else grid.by_area()


def cellularity_readout(
    source: Any,
    regions: Sequence[np.ndarray] = (),
    *,
    mpp: float | None = None,
    level: int = 0,
    **cell_kwargs,
) -> dict:
    """Cellularity of a result and of each region, for a widget readout.

    ``source`` is a :class:`~napari_histoseg.analysis.cells.CellTable` already extracted, or anything
    :func:`~napari_histoseg.analysis.cells.iter_cells` reads (a label array, a LabelStore, napari multiscale data);
    ``regions`` are polygons in that map's pixel frame ((K, 2) (y, x)); ``mpp`` microns per map pixel (areas in
    square microns, and the cell rules converted to the map's pixels, see ``iter_cells``).
    Returns ``{"whole": dict, "regions": [dict, ...], "text": str, "table": CellTable}``.
    """
    if isinstance(source, CellTable):
        table = source
    else:
        table = collect_cells(source, level=level, mpp=mpp, **cell_kwargs).table
    whole = Cellularity.of(table, mpp)
    per_region = region_cellularity(table, regions, mpp)
    lines = [f"Whole result: {whole.text()}"]
    lines += [f"Region {i}: {c.text()}" for i, c in enumerate(per_region, start=1)]
    return {
        "whole": whole.to_dict(),
        "regions": [c.to_dict() for c in per_region],
        "text": "\n".join(lines),
        "table": table,
    }
