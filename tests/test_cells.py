"""Cells from class labels: counts, classes, areas, centroids, splitting, and blockwise extraction counted once."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import points_in_poly

from _cellmaps import draw_cells, lattice
from napari_histoseg.analysis.cells import (
    CellExtractionError,
    CellProgress,
    CellResult,
    collect_cells,
    extract_cells,
    iter_cells,
)
from napari_histoseg.analysis.instances import (
    DEFAULT_EDGE_MIN_AREA,
    DEFAULT_EXPAND,
    DEFAULT_MIN_AREA,
    DEFAULT_SPLIT_DEPTH,
    RULES_MPP,
    cell_rules,
    cells_from_labels,
)
from napari_histoseg.analysis.opening import radius_at
from napari_histoseg.classes import BOUNDARY, NON_TUMOR, TUMOR


def _sorted(table):
    order = np.lexsort((table.x, table.y))
    return np.column_stack([table.y[order], table.x[order], table.area[order], table.cls[order]])


def test_known_cells_counts_classes_areas_centroids():
    centres = [(20, 20), (20, 60), (60, 30), (70, 75)]
    classes = [TUMOR, NON_TUMOR, TUMOR, TUMOR]
    labels, areas = draw_cells((100, 100), centres, classes)
    table = extract_cells(labels)
    assert len(table) == 4 and table.id.tolist() == [1, 2, 3, 4]
    got = _sorted(table)
    want = np.array(sorted((float(y), float(x), a, c) for (y, x), a, c in zip(centres, areas, classes, strict=True)))
    np.testing.assert_allclose(got, want)


def test_rings_in_contact_are_two_cells_and_a_gap_is_split_by_the_watershed():
    # Two nuclei whose boundary rings touch: the boundary class separates them.
    labels, areas = draw_cells((40, 60), [(20, 20), (20, 33)], [TUMOR, NON_TUMOR], radius=6)
    table = extract_cells(labels)
    assert sorted(table.cls.tolist()) == [TUMOR, NON_TUMOR] and sorted(table.area.tolist()) == sorted(areas)
    # Now open both rings where they meet: the interiors join through a 3-px neck.
    labels, _ = draw_cells((40, 60), [(20, 20), (20, 33)], [TUMOR, TUMOR], radius=6)
    labels[19:22, 24:30] = TUMOR
    assert len(extract_cells(labels, split=False)) == 1
    split = extract_cells(labels)
    assert len(split) == 2
    np.testing.assert_allclose(np.sort(split.x), [20, 33], atol=1.0)
    # A single elongated nucleus is not split.
    ellipse = np.zeros((40, 60), np.uint8)
    rows, cols = np.indices(ellipse.shape)
    r = np.hypot((rows - 20) / 5, (cols - 30) / 14)
    ellipse[r <= 1] = BOUNDARY
    ellipse[r <= 0.6] = NON_TUMOR
    assert len(extract_cells(ellipse)) == 1


def test_majority_class_and_tiny_specks_dropped():
    labels, _ = draw_cells((40, 40), [(20, 20)], [NON_TUMOR], radius=8)
    labels[17:21, 17:21] = TUMOR  # 16 tumor pixels in a ~113-px non-tumor interior
    labels[2, 2] = TUMOR
    table = extract_cells(labels)
    assert table.cls.tolist() == [NON_TUMOR]
    inst, classes = cells_from_labels(labels, min_area=1)
    assert classes.size - 1 == 2


def test_small_cells_cut_by_the_image_edge_are_kept():
    labels = np.zeros((60, 60), np.uint8)
    labels[28:31, 28:31] = TUMOR  # a 9-px speck inside: noise
    labels[15:18, 30:33] = TUMOR  # another, across the border of 16-px blocks (not the image edge)
    labels[10:13, 0:3] = NON_TUMOR  # 9 px at the left edge: a nucleus cut by the image
    labels[40:43, 57:60] = TUMOR  # and at the right edge
    table = extract_cells(labels)
    np.testing.assert_array_equal(_sorted(table)[:, [0, 1, 3]], [[11, 1, NON_TUMOR], [41, 58, TUMOR]])
    assert len(extract_cells(labels, edge_min_area=None)) == 0
    assert len(extract_cells(labels, min_area=4, edge_min_area=None)) == 4
    assert len(extract_cells(labels, edge_min_area=10)) == 0
    blockwise = collect_cells(labels, block=16, halo=8)
    np.testing.assert_array_equal(_sorted(blockwise.table), _sorted(table))
    assert blockwise.summary()["settings"]["edge_min_area"] == 4


def test_cell_rules_follow_the_map_resolution():
    given = {
        "min_area": DEFAULT_MIN_AREA,
        "edge_min_area": DEFAULT_EDGE_MIN_AREA,
        "expand": DEFAULT_EXPAND,
        "split_depth": DEFAULT_SPLIT_DEPTH,
    }
    assert cell_rules() == cell_rules(RULES_MPP) == given
    # A 20x slide's labels (0.5 um/px): lengths halve, areas quarter.
    half = cell_rules(2 * RULES_MPP)
    assert half == {"min_area": 5, "edge_min_area": 1, "expand": 1.5, "split_depth": 0.75}
    assert cell_rules(RULES_MPP / 2, min_area=10, edge_min_area=None)["min_area"] == 40
    assert cell_rules(RULES_MPP / 2, edge_min_area=None)["edge_min_area"] is None
    with pytest.raises(ValueError, match="positive"):
        cell_rules(0.0)
    assert [radius_at(2, f) for f in (0.5, 1, 2, 4)] == [4, 2, 1, 1] and radius_at(0, 2) == 0


def test_small_cells_of_a_coarser_map_are_kept_when_its_resolution_is_given():
    # Nuclei of a 20x slide's labels: 13-px interiors (52 px at 0.25 um/px) in 1-px rings.
    labels, _ = draw_cells((60, 60), [(15, 15), (15, 40), (40, 25)], [TUMOR, NON_TUMOR, TUMOR], radius=3, ring=1)
    interiors = cells_from_labels(labels, min_area=1, expand=0)[0]
    assert np.bincount(interiors.ravel())[1:].tolist() == [13, 13, 13]
    assert len(extract_cells(labels)) == 0  # taken as pixels at 0.25 um/px: specks
    result = collect_cells(labels, mpp=2 * RULES_MPP)
    assert result.cells == 3 and result.counts == {"tumor": 2, "non_tumor": 1}
    assert result.settings["mpp"] == 0.5 and result.settings["min_area"] == 5


@pytest.mark.parametrize("block", [32, 45, 64, 100])
def test_blockwise_counts_each_cell_once(block):
    labels, centres, classes, areas = lattice((230, 250))
    # Put cells right on block borders too (rows/columns multiple of the block size).
    extra = [(block, block), (block, 2 * block - 1), (2 * block, block + 3)]
    extra = [(y, x) for y, x in extra if 8 < y < 222 and 8 < x < 242]
    labels2, _ = draw_cells(labels.shape, extra, [TUMOR] * len(extra))
    labels = np.where(labels2 > 0, labels2, labels)
    whole = collect_cells(labels, block=1000)
    blockwise = collect_cells(labels, block=block, halo=20)
    assert blockwise.blocks == -(-230 // block) * -(-250 // block)
    assert blockwise.cells == whole.cells and blockwise.oversized == 0
    np.testing.assert_array_equal(_sorted(blockwise.table), _sorted(whole.table))
    assert blockwise.table.id.tolist() == list(range(1, whole.cells + 1))
    assert blockwise.counts == whole.counts and blockwise.areas == whole.areas


def test_lattice_truth_and_progress_events():
    labels, centres, classes, areas = lattice((200, 200), seed=3)
    events = list(iter_cells(labels, block=64, halo=20))
    progress = [e for e in events if isinstance(e, CellProgress)]
    result = events[-1]
    assert isinstance(result, CellResult) and len(progress) == 16
    assert [e.blocks_done for e in progress] == list(range(1, 17))
    assert progress[-1].cells == result.cells == len(centres)
    assert result.counts == {"tumor": classes.count(TUMOR), "non_tumor": classes.count(NON_TUMOR)}
    assert result.areas["tumor"] + result.areas["non_tumor"] == sum(areas)
    assert result.summary()["cells_per_second"] > 0


def test_label_store_levels(tmp_path):
    from napari_histoseg.io.store import LabelStore

    labels, centres, _, _ = lattice((600, 560), seed=1)
    store = LabelStore.create(tmp_path / "s.zarr", labels.shape, block=512, settings={})
    assert len(store.levels) == 2
    for by in range(2):
        for bx in range(2):
            y0, x0 = by * 512, bx * 512
            core = (y0, x0, min(600, y0 + 512), min(560, x0 + 512))
            store.write_block((by, bx), core, labels[core[0] : core[2], core[1] : core[3]])
    table = extract_cells(store, block=256)
    np.testing.assert_array_equal(_sorted(table), _sorted(extract_cells(labels)))
    assert len(extract_cells(store, level=1, block=128, min_area=1)) > 0.8 * len(centres)
    with pytest.raises(CellExtractionError, match="level 5"):
        extract_cells(store, level=5)


def test_cells_larger_than_the_halo_are_reported():
    labels, _ = draw_cells((120, 120), [(60, 60)], [TUMOR], radius=40)
    with pytest.warns(UserWarning, match="halo"):
        result = collect_cells(labels, block=32, halo=8)
    assert result.oversized >= 1


def test_outlines_are_closed_contain_the_centroid_and_match_the_area():
    labels, centres, _, _ = lattice((120, 120), seed=2)
    table = extract_cells(labels, block=50, halo=20, polygons=True)
    assert len(table.polygons) == len(table)
    for ring, y, x, area in zip(table.polygons, table.y, table.x, table.area, strict=True):
        assert ring.shape[1] == 2 and len(ring) >= 4 and np.array_equal(ring[0], ring[-1])
        assert points_in_poly([[y, x]], ring)[0]
        ys, xs = ring[:, 0], ring[:, 1]
        shoelace = 0.5 * (np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]))
        assert shoelace > 0  # counterclockwise in (x, y)
        assert abs(shoelace - area) < 0.25 * area  # a pixel-edge outline through pixel centres: a bit smaller


def test_bad_input():
    with pytest.raises(CellExtractionError, match="2-D"):
        extract_cells(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CellExtractionError, match="halo"):
        extract_cells(np.zeros((4, 4), np.uint8), halo=0)
    assert len(extract_cells(np.zeros((50, 50), np.uint8), block=16)) == 0
