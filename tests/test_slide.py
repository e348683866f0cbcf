"""The lazy slide reader: real SVS slides, generated pyramids, conversions and bad input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import dask.array as da
import numpy as np
import pytest
import tifffile
import tifffile.zarr

from _pyramids import corrupt, downsample2, real_tissue, truncate, write_fluorescence, write_pyramid
from napari_histoseg.engine.resolution import read_padded
from napari_histoseg.io.slide import (
    LOWEST_LEVEL_MAX_SIDE,
    Slide,
    SlideError,
    UnsupportedSlideError,
    open_slide,
)


def region_of(slide, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
    """A box of one level, padded with white outside it, read as the engine reads blocks."""
    return read_padded(slide.levels[level], y, x, y + height, x + width)


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return real_tissue(700, 900)


@pytest.fixture
def chunk_reads():
    """Record the zarr chunk keys read from any tifffile store ('<level>/<row>.<col>.<sample>')."""
    keys: list[str] = []
    original = tifffile.zarr.ZarrTiffStore.get

    async def get(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    with mock.patch.object(tifffile.zarr.ZarrTiffStore, "get", get):
        yield keys


def _check_pyramid(slide: Slide) -> None:
    """Invariants every opened slide keeps."""
    assert slide.levels[0].shape[:2] == slide.shape
    for i, level in enumerate(slide.levels):
        assert isinstance(level, da.Array)
        assert level.ndim == 3 and level.shape[2] == 3 and level.dtype == np.uint8
        assert slide.downsample(i) == pytest.approx(slide.shape[1] / level.shape[1], rel=0.01)
    assert max(slide.levels[-1].shape[:2]) <= LOWEST_LEVEL_MAX_SIDE
    json.dumps(slide.metadata)  # JSON-serialisable
    assert slide.metadata["level_shapes"] == [list(lv.shape[:2]) for lv in slide.levels]


def _assert_chunks_on_tiles(level: da.Array, tile: int) -> None:
    for axis in (0, 1):
        sizes = level.chunks[axis]
        assert all(c % tile == 0 for c in sizes[:-1]), level.chunks
        assert 256 <= max(sizes) <= 4096 or max(sizes) == level.shape[axis]


# --- real slides ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cmu_svs_jpeg_single_level(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        _check_pyramid(slide)
        assert slide.shape == (2967, 2220)
        meta = slide.metadata
        assert meta["format"] == "aperio-svs" and meta["vendor"] == "aperio"
        assert meta["compression"] == "JPEG" and meta["tile_size"] == [240, 240]
        assert meta["magnification"] == 20.0 and meta["levels_in_file"] == 1
        assert slide.mpp[0] == pytest.approx(0.499)
        assert slide.mpp[1] == pytest.approx(0.998)
        assert [lv.shape[:2] for lv in slide.levels] == [(2967, 2220), (1483, 1110), (741, 555)]
        _assert_chunks_on_tiles(slide.levels[0], 240)
        truth = tifffile.imread(cmu_svs, series=0)
        np.testing.assert_array_equal(region_of(slide, 0, 1000, 700, 300, 500), truth[1000:1300, 700:1200])
        # A built level is the 2x2 mean of level 0.
        expected = downsample2(truth[1000:1100, 700:900])
        got = region_of(slide, 1, 500, 350, 50, 100)
        assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.slow
def test_tcga_svs_jpeg2000_two_levels_no_mpp(tcga_svs: Path) -> None:
    with open_slide(tcga_svs) as slide:
        _check_pyramid(slide)
        assert slide.metadata["levels_in_file"] == 2
        assert [lv.shape[:2] for lv in slide.levels[:2]] == [(3567, 4443), (1783, 2221)]
        assert slide.metadata["compression"] == "APERIO_JP2000_RGB"
        assert slide.mpp == [None] * len(slide.levels)
        with tifffile.TiffFile(tcga_svs) as tif:
            truth = tif.series[0].levels[1].asarray()[100:400, 200:600]
        np.testing.assert_array_equal(region_of(slide, 1, 100, 200, 300, 400), truth)


# --- generated pyramids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ome", "bigtiff", "subifds", "fmt"),
    [(True, False, True, "ome-tiff"), (False, True, True, "bigtiff"), (False, False, False, "tiff")],
    ids=["ome-subifds", "bigtiff-subifds", "tiff-reduced-pages"],
)
def test_generated_jpeg_pyramid(tmp_path, tissue, ome, bigtiff, subifds, fmt) -> None:
    path = write_pyramid(
        tmp_path / ("p.ome.tif" if ome else "p.tif"),
        tissue,
        3,
        ome=ome,
        bigtiff=bigtiff,
        subifds=subifds,
        mpp=0.25,
    )
    with open_slide(path) as slide:
        _check_pyramid(slide)
        assert slide.metadata["format"] == fmt
        assert slide.metadata["bigtiff"] is bigtiff
        assert slide.metadata["levels_in_file"] == 3 == len(slide.levels)
        assert [lv.shape[:2] for lv in slide.levels] == [(700, 900), (350, 450), (175, 225)]
        assert slide.mpp == pytest.approx([0.25, 0.5, 1.0])
        assert slide.metadata["mpp_source"] == ("ome" if ome else "tiff-resolution")
        assert slide.metadata["compression"] == "JPEG"
        _assert_chunks_on_tiles(slide.levels[0], 256)
        level0 = slide.levels[0].compute()
        assert np.abs(level0.astype(int) - tissue).mean() < 8  # JPEG
        lowest = slide.levels[2].compute()
        assert np.abs(lowest.astype(int) - downsample2(downsample2(tissue))).mean() < 8


def test_opening_reads_no_full_resolution_tiles(tmp_path, tissue, chunk_reads) -> None:
    path = write_pyramid(tmp_path / "p.tif", real_tissue(1100, 1300), 3)
    slide = open_slide(path)
    assert chunk_reads, "the codec probe should decode one tile of the smallest level"
    assert all(key.startswith("2/") for key in chunk_reads), chunk_reads
    chunk_reads.clear()
    region_of(slide, 0, 300, 300, 10, 10)
    assert chunk_reads == ["0/1.1.0"]  # only the tile under the region


def test_single_level_tiled_builds_lazy_levels(tmp_path, chunk_reads) -> None:
    image = real_tissue(2100, 1500)
    path = write_pyramid(tmp_path / "single.tif", image, 1, compression="zlib", mpp=0.5)
    with open_slide(path) as slide:
        _check_pyramid(slide)
        assert slide.metadata["levels_in_file"] == 1
        assert [lv.shape[:2] for lv in slide.levels] == [(2100, 1500), (1050, 750), (525, 375)]
        assert slide.mpp == pytest.approx([0.5, 1.0, 2.0])
        for level in slide.levels:
            assert max(level.chunksize[:2]) <= 1024
        n_opened = len(chunk_reads)
        np.testing.assert_array_equal(slide.levels[0][:300, :300].compute(), image[:300, :300])
        np.testing.assert_array_equal(region_of(slide, 2, 0, 0, 64, 64), slide.levels[2][:64, :64].compute())
        assert len(chunk_reads) > n_opened  # built levels are read on demand, not at open
        level1 = slide.levels[1].compute()
    assert np.abs(level1.astype(int) - downsample2(image)).max() <= 1


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["uncompressed-memmap", "zlib-strips"])
def test_single_level_stripped(tmp_path, tissue, compression) -> None:
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, tissue, photometric="rgb", compression=compression, rowsperstrip=32)
    with open_slide(path) as slide:
        _check_pyramid(slide)
        assert slide.metadata["tile_size"] is None
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)
        region = region_of(slide, 0, 650, 850, 80, 80)
    np.testing.assert_array_equal(region[:50, :50], tissue[650:, 850:])
    assert (region[50:] == 255).all() and (region[:, 50:] == 255).all()


# --- conversions ----------------------------------------------------------------------------------------


def test_rgba_loses_alpha(tmp_path, tissue) -> None:
    rgba = np.dstack([tissue, np.full(tissue.shape[:2], 7, np.uint8)])
    path = write_pyramid(tmp_path / "rgba.tif", rgba, 2, compression="zlib")
    with open_slide(path) as slide:
        assert slide.metadata["converted_from"] == "rgba"
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)
        assert slide.levels[1].shape == (350, 450, 3)


def test_greyscale_becomes_rgb(tmp_path, tissue) -> None:
    grey = tissue[..., 1]
    path = write_pyramid(tmp_path / "grey.tif", grey, 1, compression="zlib")
    with open_slide(path) as slide:
        assert slide.metadata["converted_from"] == "grey"
        region = region_of(slide, 0, 10, 20, 30, 40)
    np.testing.assert_array_equal(region, np.repeat(grey[10:40, 20:60, None], 3, axis=2))


def test_rgb16_scaled_to_8_bit(tmp_path, tissue) -> None:
    path = write_pyramid(tmp_path / "rgb16.tif", tissue.astype(np.uint16) * 257, 1, compression="zlib")
    with open_slide(path) as slide:
        assert slide.metadata["converted_from"] == "rgb16" and slide.metadata["dtype"] == "uint16"
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)


def test_planar_rgb(tmp_path, tissue) -> None:
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(tissue, -1, 0), photometric="rgb", planarconfig="separate", tile=(128, 128))
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)


def test_grey16_refused(tmp_path, tissue) -> None:
    path = write_pyramid(tmp_path / "grey16.tif", tissue[..., 0].astype(np.uint16) * 100, 1, compression="zlib")
    with pytest.raises(UnsupportedSlideError, match=r"grey16\.tif: 16-bit greyscale"):
        open_slide(path)


def test_fluorescence_refused_saying_what_it_is(tmp_path) -> None:
    path = write_fluorescence(tmp_path / "fluo.ome.tif", channels=4)
    with pytest.raises(UnsupportedSlideError, match=r"fluo\.ome\.tif: multichannel fluorescence") as info:
        open_slide(path)
    assert "4 channels" in str(info.value) and "DAPI" in str(info.value)


# --- regions and threads --------------------------------------------------------------------------------


def test_padded_region_reads_white_outside(tmp_path, tissue) -> None:
    path = write_pyramid(tmp_path / "p.tif", tissue, 2, compression="zlib")
    with open_slide(path) as slide:
        region = region_of(slide, 0, -20, 880, 60, 50)
        assert region.shape == (60, 50, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region[20:, :20], tissue[:40, 880:900])
        assert (region[:20] == 255).all() and (region[:, 20:] == 255).all()
        assert (region_of(slide, 1, 5000, 5000, 8, 8) == 255).all()  # entirely outside


def test_concurrent_reads_match_serial(tmp_path) -> None:
    image = real_tissue(1024, 1024)
    path = write_pyramid(tmp_path / "p.tif", image, 2)
    boxes = [(y, x) for y in range(0, 1024, 192) for x in range(0, 1024, 192)]
    with open_slide(path) as slide:
        serial = [region_of(slide, 0, y, x, 200, 200) for y, x in boxes]
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(lambda b: region_of(slide, 0, b[0], b[1], 200, 200), boxes * 2))
    for a, b in zip(serial * 2, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_close_closes_the_file(tmp_path, tissue) -> None:
    path = write_pyramid(tmp_path / "p.tif", tissue, 1, compression="zlib")
    slide = open_slide(path)
    handle = slide._tif.filehandle
    with slide:
        assert not handle.closed
    assert handle.closed
    slide.close()  # twice is fine


# --- bad input ------------------------------------------------------------------------------------------


@pytest.fixture
def good_pyramid(tmp_path, tissue) -> Path:
    return write_pyramid(tmp_path / "good.tif", tissue, 3)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(SlideError, match=r"nothere\.svs: no such file"):
        open_slide(tmp_path / "nothere.svs")


def test_empty_file(tmp_path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.tif: the file is empty"):
        open_slide(tmp_path / "empty.tif")


def test_text_file_named_tif(tmp_path) -> None:
    (tmp_path / "notes.tif").write_text("these are notes, not an image\n")
    with pytest.raises(SlideError, match=r"notes\.tif: not a TIFF file"):
        open_slide(tmp_path / "notes.tif")


def test_corrupt_header(tmp_path, good_pyramid) -> None:
    path = corrupt(good_pyramid, tmp_path / "broken.tif")
    with pytest.raises(SlideError, match=r"broken\.tif: corrupt or unreadable TIFF"):
        open_slide(path)


def test_truncated_file(tmp_path, good_pyramid) -> None:
    path = truncate(good_pyramid, tmp_path / "cut.tif", 0.6)
    with pytest.raises(SlideError, match=r"cut\.tif: .*truncated"):
        open_slide(path)


def test_corrupt_tile_data_fails_at_open(tmp_path, good_pyramid) -> None:
    with tifffile.TiffFile(good_pyramid) as tif:
        page = tif.series[0].levels[-1].keyframe
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(good_pyramid.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path = tmp_path / "badtile.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match=r"badtile\.tif: cannot decode the pixel data \(JPEG\)"):
        open_slide(path)
