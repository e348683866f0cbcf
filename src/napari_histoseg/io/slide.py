"""Open a whole-slide image lazily: tifffile ``aszarr`` -> zarr -> a dask pyramid, with microns per pixel.

Handles Aperio SVS (JPEG, JPEG2000), OME-TIFF (SubIFD pyramids), generic pyramidal TIFF/BigTIFF, NDPI (as far
as tifffile reads it) and single-level TIFFs of any size, for which lower levels are built lazily with dask.
Every level is an ``(H, W, 3) uint8`` dask array whose chunks are whole multiples of the file's tiles.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import tifffile
import zarr

from .slide_levels import (
    SlideError,
    UnsupportedSlideError,
    as_dask,
    check_not_truncated,
    classify,
    halve,
    memmap_or_none,
    probe,
    to_rgb,
    white_of,
)
from .slide_metadata import format_name, jsonable, level0_mpp, magnification, svs_metadata, vendor

__all__ = ["Slide", "SlideError", "UnsupportedSlideError", "open_slide"]

#: Lazily built levels are added until the smallest level's largest side is at most this.
LOWEST_LEVEL_MAX_SIDE = 1024
#: Decode tiles in threads (tifffile only does so when ``maxworkers > 1``).
_DECODE_WORKERS = 4

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class Slide:
    """A lazily read slide pyramid.

    ``levels[0]`` is full resolution; every level is an ``(H, W, 3) uint8`` dask array read on demand from the
    open file (the handle stays open until :meth:`close`). Levels that the file does not hold (for a
    single-level file, or a pyramid whose smallest level is still large) are computed on demand by 2x2
    averaging; ``metadata["levels_in_file"]`` says how many levels come from the file. Reading is thread-safe.
    """

    path: Path
    levels: list[da.Array]
    mpp: list[float | None]
    metadata: dict
    _downsamples: list[float] = field(default_factory=list, repr=False)
    _tif: tifffile.TiffFile | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (height, width) in pixels."""
        return (int(self.levels[0].shape[0]), int(self.levels[0].shape[1]))

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level``."""
        self._check_level(level)
        return self._downsamples[level]

    def close(self) -> None:
        """Close the file; the dask levels can no longer be read afterwards."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self.levels):
            raise ValueError(f"{self.path.name}: level {level} does not exist (levels 0..{len(self.levels) - 1})")


def is_tiff(path: str | os.PathLike) -> bool:
    """True when the file starts with a TIFF or BigTIFF signature (cheap; reads 4 bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide lazily; raise :class:`SlideError` (naming the file) if it cannot be read as an RGB slide.

    Nothing is decoded except one tile of the smallest level in the file, read to fail early on a codec
    that is missing or on corrupt data.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    file_size = path.stat().st_size
    if file_size == 0:
        raise SlideError(f"{name}: the file is empty")
    if not is_tiff(path):
        raise SlideError(f"{name}: not a TIFF file (no TIFF/BigTIFF signature); cannot read it as a slide")
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types on a damaged header
        raise SlideError(f"{name}: corrupt or unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        return _build_slide(tif, path, file_size)
    except SlideError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise SlideError(f"{name}: corrupt or unreadable TIFF ({type(exc).__name__}: {exc})") from exc


def _build_slide(tif: tifffile.TiffFile, path: Path, file_size: int) -> Slide:
    name = path.name
    if not tif.series:
        raise SlideError(f"{name}: corrupt or unreadable TIFF (no readable image directory)")
    # The main image is the largest series (SVS/NDPI also hold thumbnail, label and macro images).
    series_index = max(range(len(tif.series)), key=lambda i: math.prod(tif.series[i].shape))
    series = tif.series[series_index]
    kind = classify(series, name, tif)
    check_not_truncated(series, name, file_size)

    store = series.aszarr(multiscales=True, maxworkers=_DECODE_WORKERS)
    group = zarr.open_group(store, mode="r")
    sources = []
    for i, level_series in enumerate(series.levels):
        source = memmap_or_none(tif, path, series_index, i, level_series)
        sources.append((group[str(i)] if source is None else source, level_series))
    probe(sources[-1][0], name, series)
    white = white_of(sources[-1][0], kind, name) if kind.endswith("rgb16") else 255
    file_levels = [to_rgb(as_dask(source, level_series), kind, white) for source, level_series in sources]

    h0, w0 = file_levels[0].shape[:2]
    downsamples = [(h0 / lv.shape[0] + w0 / lv.shape[1]) / 2 for lv in file_levels]
    levels = list(file_levels)
    while max(levels[-1].shape[:2]) > LOWEST_LEVEL_MAX_SIDE and min(levels[-1].shape[:2]) >= 2:
        levels.append(halve(levels[-1]))
        downsamples.append(downsamples[-1] * 2)

    mpp0, mpp0_y, mpp_source = level0_mpp(tif, series, series_index)
    mpp = [None if mpp0 is None else mpp0 * d for d in downsamples]
    kf = series.keyframe
    metadata: dict[str, Any] = {
        "file_name": name,
        "path": str(path),
        "file_size": file_size,
        "format": format_name(tif),
        "vendor": vendor(tif),
        "magnification": magnification(tif, series_index),
        "bigtiff": bool(tif.is_bigtiff),
        "series": series.name or str(series_index),
        "tile_size": [int(kf.tilelength), int(kf.tilewidth)] if kf.is_tiled else None,
        "compression": kf.compression.name,
        "photometric": kf.photometric.name,
        "dtype": str(series.dtype),
        "converted_from": kind if kind != "rgb" else None,
        "white_level": white,
        "level_shapes": [[int(lv.shape[0]), int(lv.shape[1])] for lv in levels],
        "level_downsamples": [float(d) for d in downsamples],
        "levels_in_file": len(file_levels),
        "chunk_size": [int(levels[0].chunksize[0]), int(levels[0].chunksize[1])],
        "mpp": mpp0,
        "mpp_y": mpp0_y,
        "mpp_source": mpp_source,
    }
    if tif.is_svs:
        metadata["aperio"] = jsonable(svs_metadata(tif))
    return Slide(path=path, levels=levels, mpp=mpp, metadata=metadata, _downsamples=downsamples, _tif=tif)
