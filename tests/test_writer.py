"""napari side: the Labels writer (OME-Zarr, TIFF), the cellularity map layer, Shapes regions and the readout."""

from __future__ import annotations

import numpy as np
import pytest

from _cellmaps import draw_cells, lattice
from napari_histoseg.analysis.cellularity import CellularityGrid
from napari_histoseg.classes import NON_TUMOR, TUMOR

napari = pytest.importorskip("napari")

from napari.layers import Labels, Shapes  # noqa: E402

from napari_histoseg._napari.cellularity import cellularity_image, layer_readout, shapes_to_regions  # noqa: E402
from napari_histoseg._napari.writer import layer_mpp, write_labels  # noqa: E402


def test_writer_zarr_tiff_and_multiscale(tmp_path):
    import tifffile
    import zarr

    labels, *_ = lattice((300, 280), seed=9)
    attrs = {"scale": (0.5, 0.5), "units": ("micrometer", "micrometer"), "multiscale": False}
    assert layer_mpp(attrs) == 0.5 and layer_mpp({"scale": (1, 1)}) is None
    [zpath] = write_labels(str(tmp_path / "out.zarr"), labels, attrs)
    group = zarr.open_group(zpath, mode="r")
    np.testing.assert_array_equal(group["0"][:], labels)
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    [again] = write_labels(zpath, labels[:100], attrs)  # napari asked before replacing
    assert zarr.open_group(again, mode="r")["0"].shape == (100, 280)
    [tpath] = write_labels(str(tmp_path / "out.tiff"), [labels, labels[::2, ::2]], {"multiscale": True})
    with tifffile.TiffFile(tpath) as tif:
        assert len(tif.series[0].levels) == 2
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), labels[::2, ::2])
    [bare] = write_labels(str(tmp_path / "noext"), labels, {})
    assert bare.endswith("noext.zarr")


def test_save_layers_through_napari_uses_the_manifest_writer(tmp_path):
    import npe2
    from napari.plugins.io import save_layers

    npe2.PluginManager.instance().discover()  # a Viewer would do this; the test has none
    labels, *_ = lattice((120, 120), seed=10)
    layer = Labels(labels, name="classes")
    written = save_layers(str(tmp_path / "saved.tif"), [layer], plugin="napari-histoseg")
    assert written == [str(tmp_path / "saved.tif")]
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(written[0]), labels)


def test_cellularity_image_lines_up_with_the_labels():
    grid = CellularityGrid((256, 192), cell=64)
    labels_layer = Labels(np.zeros((256, 192), np.uint8), scale=(0.5, 0.5), translate=(10, 20))
    layer = cellularity_image(grid, labels_layer)
    assert layer.data.shape == (4, 3)
    np.testing.assert_allclose(layer.scale, (32, 32))
    # Grid square (0, 0) covers label pixels 0..63: its centre is label pixel 31.5 in world coordinates.
    np.testing.assert_allclose(layer.data_to_world((0, 0)), labels_layer.data_to_world((31.5, 31.5)))
    assert layer.colorbar.visible and tuple(layer.contrast_limits) == (0.0, 1.0)


def test_shapes_regions_and_the_readout_in_world_coordinates():
    centres = [(20, 20), (20, 60), (60, 20), (60, 60)]
    classes = [TUMOR, NON_TUMOR, TUMOR, TUMOR]
    labels, _ = draw_cells((100, 100), centres, classes)
    # Labels shown at 0.5 um per pixel; the Shapes layer draws in microns (world).
    labels_layer = Labels(labels, scale=(0.5, 0.5), units=("micrometer", "micrometer"))
    shapes = Shapes(
        [np.array([[0, 0], [0, 50], [20, 50], [20, 0]]), np.array([[0, 0], [50, 50]]), np.array([[25, 0], [25, 50]])],
        shape_type=["rectangle", "ellipse", "line"],
    )
    regions = shapes_to_regions(shapes, labels_layer)
    assert len(regions) == 2  # the line encloses nothing
    np.testing.assert_allclose(regions[0].min(0), [0, 0])
    np.testing.assert_allclose(regions[0].max(0), [40, 100])
    readout = layer_readout(labels_layer, shapes)
    assert readout["whole"]["cells"] == 4 and readout["whole"]["cellularity_by_count"] == 0.75
    top = readout["regions"][0]
    assert (top["tumor_cells"], top["non_tumor_cells"]) == (1, 1)  # y < 40 px: the two top cells
    assert readout["regions"][1]["cells"] == 4  # the ellipse inscribed in the image holds all four centres
    assert "tumor_area_um2" in readout["whole"]
    assert "Region 2: tumor cellularity 75.0% of 4 cells" in readout["text"]
