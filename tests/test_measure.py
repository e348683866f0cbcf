"""Tumor cellularity: whole result, drawn regions, and the coarse map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _cellmaps import draw_cells, lattice
from napari_histoseg.analysis.cells import CellTable, extract_cells
from napari_histoseg.analysis.cellularity import (
    Cellularity,
    CellularityGrid,
    RegionError,
    cellularity_map,
    cellularity_readout,
    region_cellularity,
)
from napari_histoseg.classes import NON_TUMOR, TUMOR


def _table(ys, xs, classes, areas):
    n = len(ys)
    return CellTable(
        np.arange(1, n + 1),
        np.asarray(classes, np.uint8),
        np.asarray(ys, float),
        np.asarray(xs, float),
        np.asarray(areas, np.int64),
    )


def test_cellularity_by_count_and_by_area():
    table = _table([1, 2, 3, 4], [1, 2, 3, 4], [TUMOR, TUMOR, TUMOR, NON_TUMOR], [10, 10, 20, 60])
    c = Cellularity.of(table, mpp=0.5)
    assert (c.cells, c.tumor_cells, c.non_tumor_cells) == (4, 3, 1)
    assert c.by_count == 0.75 and c.by_area == 0.4
    d = c.to_dict()
    assert d["cellularity_by_count"] == 0.75 and d["tumor_area_um2"] == 10.0 and d["non_tumor_area_um2"] == 15.0
    assert "75.0%" in c.text() and "40.0% by area" in c.text()
    empty = Cellularity.of(CellTable.empty())
    assert math.isnan(empty.by_count) and empty.to_dict()["cellularity_by_count"] is None
    assert empty.text() == "no cells"


def test_regions_select_cells_by_centroid():
    centres = [(20, 20), (20, 60), (60, 20), (60, 60), (100, 100)]
    classes = [TUMOR, TUMOR, NON_TUMOR, TUMOR, NON_TUMOR]
    labels, areas = draw_cells((120, 120), centres, classes)
    table = extract_cells(labels)
    top = np.array([[0, 0], [0, 119], [40, 119], [40, 0]])  # (y, x): the top band holds two tumor cells
    triangle = np.array([[50, 10], [50, 110], [110, 110]])  # holds (60, 60) and (100, 100), not (60, 20)
    band, tri = region_cellularity(table, [top, triangle])
    assert (band.tumor_cells, band.non_tumor_cells) == (2, 0) and band.by_count == 1.0
    assert (tri.tumor_cells, tri.non_tumor_cells) == (1, 1) and tri.by_count == 0.5
    assert tri.tumor_area_px == areas[3] and tri.non_tumor_area_px == areas[4]
    with pytest.raises(RegionError, match="3"):
        region_cellularity(table, [np.array([[0, 0], [5, 5]])])


def test_grid_map_squares_and_streaming():
    ys = [10, 20, 30, 70, 75, 150]
    xs = [10, 20, 70, 10, 20, 150]
    classes = [TUMOR, NON_TUMOR, TUMOR, TUMOR, TUMOR, NON_TUMOR]
    table = _table(ys, xs, classes, [10, 30, 10, 10, 10, 10])
    counts = cellularity_map(table, (160, 160), cell=64)
    assert counts.shape == (3, 3)
    assert counts[0, 0] == 0.5 and counts[0, 1] == 1.0 and counts[1, 0] == 1.0 and counts[2, 2] == 0.0
    assert np.isnan(counts[1, 1]) and np.isnan(counts[2, 0])
    assert cellularity_map(table, (160, 160), cell=64, by="area")[0, 0] == 0.25
    grid = CellularityGrid((160, 160), 64)
    for part in (slice(0, 2), slice(2, 6)):
        grid.add(_table(ys[part], xs[part], classes[part], [10, 30, 10, 10, 10, 10][part]))
    np.testing.assert_array_equal(grid.by_count(), counts)
    d = grid.to_dict()
    assert d["by_count"][1][1] is None and d["cells"][0][0] == 2
    with pytest.raises(ValueError, match="by must"):
        cellularity_map(table, (160, 160), by="volume")


def test_readout_for_a_label_map_and_regions():
    labels, centres, classes, _ = lattice((120, 120), seed=4)
    left = np.array([[0, 0], [0, 60], [120, 60], [120, 0]])
    readout = cellularity_readout(labels, [left], mpp=0.25, block=64, halo=20)
    whole = readout["whole"]
    assert whole["cells"] == len(centres) and whole["tumor_cells"] == classes.count(TUMOR)
    in_left = [c for (y, x), c in zip(centres, classes, strict=True) if x < 60]
    assert readout["regions"][0]["cells"] == len(in_left)
    assert readout["regions"][0]["tumor_cells"] == in_left.count(TUMOR)
    assert readout["text"].startswith("Whole result: tumor cellularity") and "Region 1:" in readout["text"]
    again = cellularity_readout(readout["table"], [left])
    assert again["regions"] == [{k: v for k, v in readout["regions"][0].items() if "um2" not in k}]
