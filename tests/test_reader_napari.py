"""The napari reader and sample data: layer data, and opening each kind of file in a real viewer (Xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from _pyramids import corrupt, real_tissue, truncate, write_fluorescence, write_pyramid
from napari_histoseg._napari.reader import get_reader
from napari_histoseg._napari.sample_data import cmu1_small_region
from napari_histoseg.io.slide import SlideError

PLUGIN = "napari-histoseg"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One small file of each kind the reader handles, plus bad ones."""
    folder = tmp_path_factory.mktemp("slides")
    tissue = real_tissue(1200, 1500)
    made = {
        "ome": write_pyramid(folder / "pyr.ome.tiff", tissue, 3, ome=True, mpp=0.25),
        "bigtiff": write_pyramid(folder / "big.btf", tissue, 3, bigtiff=True, mpp=0.5),
        "single": write_pyramid(folder / "single.tif", tissue, 1, compression="zlib"),
        "fluorescence": write_fluorescence(folder / "fluo.ome.tif"),
    }
    made["corrupt"] = corrupt(made["bigtiff"], folder / "corrupt.tif")
    made["truncated"] = truncate(made["ome"], folder / "truncated.ome.tif", 0.5)
    made["text"] = folder / "readme.tif"
    made["text"].write_text("not an image\n")
    made["empty"] = folder / "empty.svs"
    made["empty"].write_bytes(b"")
    return made


# --- reader contract without a viewer -------------------------------------------------------------------


def test_layer_data_of_an_ome_pyramid(files) -> None:
    reader = get_reader(str(files["ome"]))
    assert callable(reader)
    [(data, meta, layer_type)] = reader(str(files["ome"]))
    assert layer_type == "image"
    assert [d.shape for d in data] == [(1200, 1500, 3), (600, 750, 3), (300, 375, 3)]
    assert meta["multiscale"] is True and meta["rgb"] is True
    assert meta["scale"] == pytest.approx((0.25, 0.25))
    assert meta["name"] == "pyr"
    assert meta["metadata"]["format"] == "ome-tiff"
    assert meta["metadata"]["path"] == str(files["ome"])
    assert meta["metadata"]["level_mpp"] == pytest.approx([0.25, 0.5, 1.0])


def test_no_scale_when_the_file_has_no_mpp(files) -> None:
    [(data, meta, _)] = get_reader(str(files["single"]))(str(files["single"]))
    assert "scale" not in meta
    assert [d.shape[:2] for d in data] == [(1200, 1500), (600, 750)]


@pytest.mark.parametrize("kind", ["text", "empty", "fluorescence"])
def test_files_it_cannot_read_get_none(files, kind) -> None:
    assert get_reader(str(files[kind])) is None


def test_other_paths_get_none(files, tmp_path) -> None:
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG")
    assert get_reader(str(png)) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(files["ome"]), str(files["bigtiff"])]) is None
    assert get_reader(str(tmp_path / "missing.svs")) is None


@pytest.mark.parametrize("kind", ["corrupt", "truncated"])
def test_corrupt_files_are_claimed_and_raise_naming_the_file(files, kind) -> None:
    reader = get_reader(str(files[kind]))
    assert callable(reader)
    with pytest.raises(SlideError, match=files[kind].name.replace(".", r"\.")):
        reader(str(files[kind]))


def test_sample_data_is_the_shipped_svs() -> None:
    [(data, meta, layer_type)] = cmu1_small_region()
    assert layer_type == "image" and meta["multiscale"] and meta["rgb"]
    assert data[0].shape == (2967, 2220, 3)
    assert meta["scale"] == pytest.approx((0.499, 0.499))
    assert meta["metadata"]["format"] == "aperio-svs"
    assert Path(meta["metadata"]["path"]).is_file()


# --- in a real viewer -----------------------------------------------------------------------------------


def _assert_shows_tissue(viewer) -> None:
    viewer.reset_view()
    viewer.window.screenshot()  # first, or the canvas-only screenshot comes back black
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.float32)
    high, low = shot.max(axis=-1), shot.min(axis=-1)
    stained = (high > 60) & ((high - low) / np.maximum(high, 1) > 0.15)  # pink/purple pixels
    assert stained.mean() > 0.1, f"screenshot shows no tissue (stained fraction {stained.mean():.3f})"
    assert shot.std() > 20


def _open(viewer, path: Path):
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    return layer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "shapes", "mpp"),
    [
        ("ome", [(1200, 1500, 3), (600, 750, 3), (300, 375, 3)], 0.25),
        ("bigtiff", [(1200, 1500, 3), (600, 750, 3), (300, 375, 3)], 0.5),
        ("single", [(1200, 1500, 3), (600, 750, 3)], None),
    ],
)
def test_viewer_opens_generated_slides(make_napari_viewer, files, kind, shapes, mpp) -> None:
    viewer = make_napari_viewer()
    layer = _open(viewer, files[kind])
    assert [tuple(d.shape) for d in layer.data] == shapes
    np.testing.assert_allclose(layer.scale, (mpp, mpp) if mpp else (1, 1))
    assert layer.metadata["file_name"] == files[kind].name
    _assert_shows_tissue(viewer)


@pytest.mark.slow
def test_viewer_opens_real_svs(make_napari_viewer, cmu_svs, tcga_svs) -> None:
    viewer = make_napari_viewer()
    cmu = _open(viewer, cmu_svs)
    assert tuple(cmu.data[0].shape) == (2967, 2220, 3)
    np.testing.assert_allclose(cmu.scale, (0.499, 0.499))
    _assert_shows_tissue(viewer)
    viewer.layers.clear()
    tcga = _open(viewer, tcga_svs)
    assert [tuple(d.shape[:2]) for d in tcga.data[:2]] == [(3567, 4443), (1783, 2221)]
    np.testing.assert_allclose(tcga.scale, (1, 1))
    _assert_shows_tissue(viewer)


@pytest.mark.slow
def test_viewer_opens_the_sample(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "cmu1_small_region")
    assert len(layers) == 1 and layers[0].multiscale and layers[0].rgb
    np.testing.assert_allclose(layers[0].scale, (0.499, 0.499))
    _assert_shows_tissue(viewer)


@pytest.mark.slow
def test_viewer_reports_bad_files_and_keeps_working(make_napari_viewer, files) -> None:
    viewer = make_napari_viewer()
    for kind in ("corrupt", "truncated"):
        with pytest.raises(SlideError, match=files[kind].name.replace(".", r"\.")):
            viewer.open(str(files[kind]), plugin=PLUGIN)
    for kind in ("text", "empty", "fluorescence"):
        with pytest.raises(ValueError, match=files[kind].name.replace(".", r"\.")):
            viewer.open(str(files[kind]), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    _open(viewer, files["ome"])  # napari is still running and opens a good file
    assert len(viewer.layers) == 1


def test_fluorescence_file_is_left_to_other_readers(files) -> None:
    """The file is a valid TIFF for napari's built-in reader; this plugin declines it."""
    assert get_reader(str(files["fluorescence"])) is None
    assert tifffile.imread(files["fluorescence"]).shape == (4, 256, 256)
