"""Exports: cells CSV (columns, units), QuPath GeoJSON parsed back, summary JSON, labels as TIFF and OME-Zarr."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from skimage.measure import points_in_poly

from _cellmaps import lattice
from napari_histoseg.analysis.cells import extract_cells
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.io.export import (
    CSV_COLUMNS,
    ExportError,
    Frame,
    output_paths,
    write_labels_ome_zarr,
    write_labels_tiff,
)
from napari_histoseg.io.store import LabelStore
from napari_histoseg.jobs.measure import write_cells_csv, write_cells_geojson, write_slide_outputs


def _segments_cross(p1, p2, q1, q2) -> bool:
    def orient(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    return orient(p1, p2, q1) * orient(p1, p2, q2) < 0 and orient(q1, q2, p1) * orient(q1, q2, p2) < 0


def _is_simple_closed_ring(ring) -> bool:
    ring = np.asarray(ring, float)
    if len(ring) < 4 or not np.array_equal(ring[0], ring[-1]):
        return False
    edges = list(zip(ring[:-1], ring[1:], strict=True))
    for i, (a, b) in enumerate(edges):
        for j in range(i + 2, len(edges)):
            if i == 0 and j == len(edges) - 1:
                continue  # neighbours through the closing point
            if _segments_cross(a, b, *edges[j]):
                return False
    return True


@pytest.fixture(scope="module")
def cell_map():
    labels, centres, classes, areas = lattice((150, 170), seed=5)
    return labels, centres, classes, areas, extract_cells(labels, block=64, halo=20, polygons=True)


def test_csv_columns_and_units(tmp_path, cell_map):
    _, centres, classes, areas, table = cell_map
    frame = Frame(downsample=2.0, mpp=0.25)
    path = write_cells_csv(tmp_path / "cells.csv", table, frame)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(centres)
    for row, y, x, area, cls in zip(rows, table.y, table.x, table.area, table.cls, strict=True):
        assert int(row["class"]) == cls and row["class_name"] == ("tumor cell" if cls == TUMOR else "non-tumor cell")
        # Label pixel y covers slide pixels [2y, 2y + 2): its centre is at 2y + 0.5 in the pixel-centre frame.
        assert float(row["centroid_y_px"]) == pytest.approx(2 * y + 0.5, abs=1e-3)
        assert float(row["centroid_x_px"]) == pytest.approx(2 * x + 0.5, abs=1e-3)
        assert float(row["centroid_y_um"]) == pytest.approx(0.25 * (2 * y + 0.5), abs=1e-3)
        assert int(row["area_px"]) == 4 * area
        assert float(row["area_um2"]) == pytest.approx(4 * area * 0.0625, abs=1e-3)
    assert sorted(int(r["area_px"]) for r in rows) == sorted(4 * a for a in areas)
    # Without a resolution the micron columns are empty, not made up.
    plain = write_cells_csv(tmp_path / "plain.csv", table)
    with open(plain, newline="") as f:
        first = next(csv.DictReader(f))
    assert first["centroid_y_um"] == "" and first["area_um2"] == ""


def test_geojson_is_a_valid_qupath_feature_collection(tmp_path, cell_map):
    labels, centres, classes, _, table = cell_map
    path = write_cells_geojson(tmp_path / "cells.geojson", table, Frame(downsample=1.0, mpp=0.5))
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(centres)
    seen = []
    for feature, y, x in zip(doc["features"], table.y, table.x, strict=True):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert _is_simple_closed_ring(ring)
        xy = np.asarray(ring)
        assert (xy >= 0).all() and (xy[:, 0] <= labels.shape[1]).all() and (xy[:, 1] <= labels.shape[0]).all()
        # QuPath frame: pixel (y, x) spans [x, x + 1) x [y, y + 1); the centroid pixel centre is inside.
        assert points_in_poly([[x + 0.5, y + 0.5]], xy)[0]
        props = feature["properties"]
        assert props["objectType"] == "detection"
        seen.append((props["classification"]["name"], tuple(props["classification"]["color"])))
        assert props["measurements"]["Area um^2"] == pytest.approx(props["measurements"]["Area px"] * 0.25)
    assert set(seen) == {("Tumor", (255, 0, 0)), ("Non-tumor", (0, 255, 0))}
    assert [name for name, _ in seen].count("Tumor") == classes.count(TUMOR)
    assert [name for name, _ in seen].count("Non-tumor") == classes.count(NON_TUMOR)
    with pytest.raises(ExportError, match="polygons=True"):
        write_cells_geojson(tmp_path / "x.geojson", extract_cells(labels))


def _store(tmp_path, labels, downsample=2.0, mpp=0.5):
    store = LabelStore.create(
        tmp_path / "slide.zarr",
        labels.shape,
        block=256,
        settings={"tile": 256},
        extra={"downsample": downsample, "mpp": mpp, "model": {"name": "m", "sha256": "ab" * 32}},
    )
    h, w = labels.shape
    for by in range(-(-h // 256)):
        for bx in range(-(-w // 256)):
            core = (by * 256, bx * 256, min(h, by * 256 + 256), min(w, bx * 256 + 256))
            store.write_block((by, bx), core, labels[core[0] : core[2], core[1] : core[3]])
    return store


def test_slide_outputs_next_to_the_store(tmp_path):
    labels, centres, classes, areas = lattice((300, 520), seed=6)
    store = _store(tmp_path, labels)
    out = write_slide_outputs(store, settings={"opening_radius": 2}, grid_px=128)
    files = out["files"]
    assert files == {k: str(v) for k, v in output_paths(tmp_path / "slide.zarr").items()}
    assert files["cells_csv"].endswith("slide_cells.csv") and files["summary_json"].endswith("slide_summary.json")
    summary = json.loads((tmp_path / "slide_summary.json").read_text())
    assert summary["cellularity"] == out["cellularity"]
    assert summary["cellularity"]["cells"] == len(centres) == out["cells"]
    assert summary["cellularity"]["tumor_cells"] == classes.count(TUMOR)
    assert summary["cellularity"]["cellularity_by_count"] == pytest.approx(classes.count(TUMOR) / len(centres))
    assert summary["model"]["sha256"] == "ab" * 32
    assert {"napari-histoseg", "numpy", "scikit-image", "python"} <= set(summary["versions"])
    assert summary["settings"]["opening_radius"] == 2 and summary["settings"]["tile"] == 256
    assert summary["settings"]["cells"]["block"] == 256
    assert summary["mpp"] == 0.25 and summary["downsample"] == 2.0  # store mpp 0.5 per label px at downsample 2
    grid = summary["cellularity_map"]
    assert grid["grid_shape"] == [3, 5] and sum(map(sum, grid["cells"])) == len(centres)
    with open(files["cells_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(centres) and max(float(r["centroid_x_px"]) for r in rows) < 2 * 520
    features = json.loads((tmp_path / "slide_cells.geojson").read_text())["features"]
    assert len(features) == len(centres)
    # Into a folder, and with a prefix.
    (tmp_path / "exports").mkdir()
    assert output_paths(store.path, tmp_path / "exports")["cells_csv"] == tmp_path / "exports" / "slide_cells.csv"
    assert output_paths(store.path, tmp_path / "run1")["summary_json"] == tmp_path / "run1_summary.json"
    with pytest.raises(ExportError, match="does not exist"):
        write_slide_outputs(store, tmp_path / "missing" / "x")
    quick = write_slide_outputs(store, tmp_path / "quick", geojson=False)
    assert "cells_geojson" not in quick["files"] and quick["cellularity"] == out["cellularity"]
    assert not (tmp_path / "quick_cells.geojson").exists()


def test_labels_tiff_pyramid_round_trip(tmp_path):
    import tifffile

    labels, *_ = lattice((600, 530), seed=7)
    path = write_labels_tiff(labels, tmp_path / "labels.tif", mpp=0.5, tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.dtype == np.uint8
        np.testing.assert_array_equal(page.asarray(), labels)
        levels = tif.series[0].levels
        assert len(levels) == 2
        np.testing.assert_array_equal(levels[1].asarray(), labels[::2, ::2])
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.5)
    store = _store(tmp_path, labels)
    with tifffile.TiffFile(write_labels_tiff(store, tmp_path / "store.ome.tif")) as tif:
        assert tif.is_ome
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), labels)
    with pytest.raises(ExportError, match="multiple of 16"):
        write_labels_tiff(labels, tmp_path / "bad.tif", tile=100)


def test_labels_ome_zarr_round_trip(tmp_path):
    import zarr

    labels, *_ = lattice((600, 530), seed=8)
    store = _store(tmp_path, labels)
    path = write_labels_ome_zarr(store, tmp_path / "copy.zarr", chunk=128)
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["0"][:], labels)
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])
    ome = group.attrs["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]
    # The store's labels are 0.5 um per pixel (its ``mpp``), so level 1 is 1 um per pixel.
    assert datasets[0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    assert ome["image-label"]["colors"][1]["rgba"] == [255, 0, 0, 255]
    with pytest.raises(ExportError, match="exists"):
        write_labels_ome_zarr(labels, path)
    write_labels_ome_zarr(labels[:300, :300], path, overwrite=True)
    assert zarr.open_group(str(path), mode="r")["0"].shape == (300, 300)
