"""Open a whole-slide image lazily: tifffile ``aszarr`` -> zarr -> a dask pyramid, with microns per pixel.

Handles Aperio SVS (JPEG, JPEG2000), OME-TIFF (SubIFD pyramids), generic pyramidal TIFF/BigTIFF, NDPI (as far
as tifffile reads it) and single-level TIFFs of any size, for which lower levels are built lazily with dask.
Every level is an ``(H, W, 3) uint8`` dask array whose chunks are whole multiples of the file's tiles.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from ..pixels import scale_to_uint8, white_level

logger = logging.getLogger(__name__)

__all__ = ["Slide", "SlideError", "UnsupportedSlideError", "open_slide"]

#: Lazily built levels are added until the smallest level's largest side is at most this.
LOWEST_LEVEL_MAX_SIDE = 1024
#: Dask chunks are the whole multiple of the file's tile closest to this size (in pixels).
TARGET_CHUNK = 1024
#: Microns per pixel outside this range is taken as a meaningless default (e.g. 72 dpi) and ignored.
PLAUSIBLE_MPP = (0.01, 100.0)
#: Decode tiles in threads (tifffile only does so when ``maxworkers > 1``).
_DECODE_WORKERS = 4

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UM_PER_UNIT = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "pm": 1e-6,
    "Å": 1e-4,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "in": 25400.0,
}


class SlideError(ValueError):
    """A slide file cannot be opened: the message names the file and the problem."""


class UnsupportedSlideError(SlideError):
    """A readable image that is not a brightfield RGB slide (fluorescence, 16-bit greyscale, stacks...)."""


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

    def read_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read a ``(height, width, 3) uint8`` box of ``level``; ``y, x`` are in that level's pixels.

        Parts of the box outside the image are padded with white (255), so the result always has the
        requested size (the inference engine reads blocks with halos that overhang the slide's borders).
        """
        self._check_level(level)
        if height <= 0 or width <= 0:
            raise ValueError(f"{self.path.name}: region size must be positive, got {height}x{width}")
        arr = self.levels[level]
        full_h, full_w = int(arr.shape[0]), int(arr.shape[1])
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + height, full_h), min(x + width, full_w)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if y1 > y0 and x1 > x0:
            # Synchronous: callers (engine threads) parallelise; zarr still decodes tiles in threads.
            out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1].compute(scheduler="synchronous")
        return out

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
    kind = _classify(series, name, tif)
    _check_not_truncated(series, name, file_size)

    store = series.aszarr(multiscales=True, maxworkers=_DECODE_WORKERS)
    group = zarr.open_group(store, mode="r")
    sources = []
    for i, level_series in enumerate(series.levels):
        source = _memmap_or_none(tif, path, series_index, i, level_series)
        sources.append((group[str(i)] if source is None else source, level_series))
    _probe(sources[-1][0], name, series)
    white = _white(sources[-1][0], kind, name) if kind.endswith("rgb16") else 255
    file_levels = [_to_rgb(_as_dask(source, level_series), kind, white) for source, level_series in sources]

    h0, w0 = file_levels[0].shape[:2]
    downsamples = [(h0 / lv.shape[0] + w0 / lv.shape[1]) / 2 for lv in file_levels]
    levels = list(file_levels)
    while max(levels[-1].shape[:2]) > LOWEST_LEVEL_MAX_SIDE and min(levels[-1].shape[:2]) >= 2:
        levels.append(_halve(levels[-1]))
        downsamples.append(downsamples[-1] * 2)

    mpp0, mpp0_y, mpp_source = _mpp(tif, series, series_index)
    mpp = [None if mpp0 is None else mpp0 * d for d in downsamples]
    kf = series.keyframe
    metadata: dict[str, Any] = {
        "file_name": name,
        "path": str(path),
        "file_size": file_size,
        "format": _format_name(tif),
        "vendor": _vendor(tif),
        "magnification": _magnification(tif, series_index),
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
        metadata["aperio"] = _jsonable(_svs_metadata(tif))
    return Slide(path=path, levels=levels, mpp=mpp, metadata=metadata, _downsamples=downsamples, _tif=tif)


# --- what kind of image is this -------------------------------------------------------------------------


def _classify(series: tifffile.TiffPageSeries, name: str, tif: tifffile.TiffFile) -> str:
    """Return 'rgb', 'rgba', 'rgb16', 'planar-rgb', 'grey' or 'grey-inverted'; raise for anything else."""
    axes, shape, dtype = series.axes, series.shape, series.dtype
    photometric = series.keyframe.photometric
    is_colour = photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    described = f"axes {axes}, shape {tuple(shape)}, {dtype}"
    if dtype not in (np.uint8, np.uint16):
        raise UnsupportedSlideError(f"{name}: {dtype} pixel data ({described}); expected an 8-bit RGB slide")
    if "C" in axes or (axes == "YXS" and not is_colour) or (axes == "YXS" and shape[-1] not in (3, 4)):
        channels = shape[axes.index("C")] if "C" in axes else shape[-1]
        names = _ome_channel_names(tif)
        listed = f": {', '.join(names)}" if names else ""
        raise UnsupportedSlideError(
            f"{name}: multichannel fluorescence image ({channels} channels{listed}; {described}), not a "
            "brightfield RGB (H&E) slide"
        )
    if axes in ("YXS", "SYX") and is_colour:
        planar = "planar-" if axes == "SYX" else ""
        if dtype == np.uint16:
            return f"{planar}rgb16"
        if planar:
            return "planar-rgb"
        return "rgba" if shape[-1] == 4 else "rgb"
    if axes == "YX":
        if photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise UnsupportedSlideError(f"{name}: palette (indexed colour) image ({described}), not an RGB slide")
        if dtype == np.uint16:
            raise UnsupportedSlideError(
                f"{name}: 16-bit greyscale image ({described}), likely fluorescence or another "
                "non-brightfield modality; expected an RGB (H&E) slide"
            )
        return "grey-inverted" if photometric == tifffile.PHOTOMETRIC.MINISWHITE else "grey"
    raise UnsupportedSlideError(f"{name}: not a 2D RGB slide ({described}, photometric {photometric.name})")


def _to_rgb(level: da.Array, kind: str, white: int = 255) -> da.Array:
    """Convert a level lazily to (H, W, 3) uint8 (16-bit data scaled by ``white``, their full scale)."""
    if kind == "rgba":
        return level[..., :3]  # alpha is dropped
    if kind.startswith("planar-"):  # samples first: (S, H, W) -> (H, W, S)
        level, kind = da.moveaxis(level[:3], 0, -1), kind[len("planar-") :]
    if kind == "rgb16":
        return scale_to_uint8(level[..., :3], white)
    if kind == "rgb":
        return level[..., :3]
    if kind in ("grey", "grey-inverted"):
        grey = 255 - level if kind == "grey-inverted" else level
        return da.stack([grey, grey, grey], axis=-1).rechunk({2: 3})
    return level


#: At most this many values are read to find the real range of 16-bit data (the smallest level, or samples of it).
_RANGE_SAMPLE = 1 << 24


def _white(source: Any, kind: str, name: str) -> int:
    """Full scale of a 16-bit RGB slide, from the largest value of its smallest level (sampled when large)."""
    planar = kind.startswith("planar-")
    height, width = (source.shape[1], source.shape[2]) if planar else (source.shape[0], source.shape[1])
    if height * width * 3 <= _RANGE_SAMPLE:
        largest = int(np.asarray(source[:]).max())
    else:
        step_y, step_x, box = max(1, height // 8), max(1, width // 8), 256
        parts = []
        for y in range(0, height, step_y):
            for x in range(0, width, step_x):
                key = (
                    (slice(None), slice(y, y + box), slice(x, x + box))
                    if planar
                    else (slice(y, y + box), slice(x, x + box))
                )
                parts.append(int(np.asarray(source[key]).max()))
        largest = max(parts)
    if largest == 0:
        raise UnsupportedSlideError(f"{name}: 16-bit RGB image whose pixels are all 0; nothing to segment")
    white = white_level(largest)
    if white != 65535:
        logger.info("%s: 16-bit RGB with values up to %d; scaled by %d to 8 bits", name, largest, white)
    return white


# --- building the dask levels --------------------------------------------------------------------------


def _chunk_len(file_chunk: int, full: int) -> int:
    """The whole multiple of the file's chunk closest to TARGET_CHUNK (never below one file chunk)."""
    return min(full, file_chunk * max(1, round(TARGET_CHUNK / file_chunk)))


def _as_dask(source: Any, level_series: tifffile.TiffPageSeries) -> da.Array:
    shape = tuple(source.shape)
    if isinstance(source, np.ndarray):  # memmap: any chunking is cheap
        chunks = tuple(min(n, TARGET_CHUNK) if i < len(shape) - 1 else n for i, n in enumerate(shape))
    else:
        file_chunks = tuple(source.chunks)
        chunks = []
        for i, (c, n) in enumerate(zip(file_chunks, shape, strict=True)):
            if n <= 4 and i in (0, len(shape) - 1):  # samples or planar-sample axis: keep whole
                chunks.append(n)
            elif c == n and n > 4 * TARGET_CHUNK:  # a strip's full width: split it (each piece decodes the strip)
                chunks.append(4 * TARGET_CHUNK)
            else:
                chunks.append(_chunk_len(c, n))
        chunks = tuple(chunks)
        if math.prod(file_chunks[:2]) > 64 * TARGET_CHUNK**2:
            logger.warning(
                "%s: the file stores level data in very large chunks %s; reading small regions will be slow",
                level_series.parent.filehandle.name,
                file_chunks,
            )
    # No dask lock: tifffile serialises file reads with the file handle's lock and decodes outside it.
    # Kept fusable (default getter), so slicing a chunk reads only the file tiles under the slice.
    return da.from_array(source, chunks=chunks, asarray=False, name=False, inline_array=True)


def _memmap_or_none(
    tif: tifffile.TiffFile, path: Path, series_index: int, level: int, level_series: tifffile.TiffPageSeries
) -> np.ndarray | None:
    """Uncompressed contiguous data is memory-mapped (a single huge strip would otherwise be read whole)."""
    if level_series.dataoffset is None or not level_series.keyframe.is_memmappable:
        return None
    try:
        return tifffile.memmap(path, series=series_index, level=level, mode="r")
    except (ValueError, OSError) as exc:
        logger.debug("%s: cannot memory-map level %d (%s); reading through zarr", path.name, level, exc)
        return None


def _halve(level: da.Array) -> da.Array:
    """Lazily average 2x2 pixel blocks, keeping chunks near TARGET_CHUNK."""
    h, w = level.shape[:2]
    even = level[: h - h % 2, : w - w % 2]
    chunk = max(2, (min(level.chunksize[0], level.chunksize[1]) // 2) * 2)
    even = even.rechunk((chunk, chunk, 3))
    half = da.coarsen(np.mean, even, {0: 2, 1: 2}, trim_excess=True, dtype=np.float32)
    half = (half + 0.5).astype(np.uint8)
    target = min(TARGET_CHUNK, max(half.shape[:2]))
    return half.rechunk((target, target, 3))


def _probe(source: Any, name: str, series: tifffile.TiffPageSeries) -> None:
    """Decode one tile of the smallest file level so a missing codec or corrupt data fails at open."""
    try:
        np.asarray(source[:1, :1])  # read the zarr array directly: one tile, no dask scheduler start-up
    except Exception as exc:
        compression = series.keyframe.compression.name
        raise SlideError(f"{name}: cannot decode the pixel data ({compression}): {type(exc).__name__}: {exc}") from exc


def _check_not_truncated(series: tifffile.TiffPageSeries, name: str, file_size: int) -> None:
    """Fail at open when tile/strip data points past the end of the file."""
    for i, level_series in enumerate(series.levels):
        for page in level_series.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
            counts = np.asarray(page.databytecounts, dtype=np.uint64)
            if offsets.size == 0:
                continue
            end = int((offsets + counts).max())
            if end > file_size:
                raise SlideError(
                    f"{name}: the file is truncated: level {i} needs {end} bytes but the file has {file_size}"
                )


# --- metadata ---------------------------------------------------------------------------------------------


def _svs_metadata(tif: tifffile.TiffFile) -> dict[str, Any]:
    from tifffile.tifffile import svs_description_metadata

    try:
        return svs_description_metadata(tif.pages.first.description)
    except ValueError:
        return {}


def _mpp(
    tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, series_index: int
) -> tuple[float | None, float | None, str | None]:
    """Level-0 microns per pixel (x, y) and where it came from: Aperio MPP, OME PhysicalSize, TIFF tags."""
    if tif.is_svs:
        value = _svs_metadata(tif).get("MPP")
        if isinstance(value, (int, float)) and _plausible(value):
            return float(value), float(value), "aperio"
    if tif.is_ome:
        found = _ome_physical_size(tif, series_index)
        if found is not None:
            return found[0], found[1], "ome"
    page = series.keyframe
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.resolution
    except (AttributeError, TypeError, ValueError):
        return None, None, None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # RESUNIT INCH / CENTIMETER
    if um_per_unit is None or not xres or not yres:
        return None, None, None
    mpp_x, mpp_y = um_per_unit / xres, um_per_unit / yres
    if _plausible(mpp_x) and _plausible(mpp_y):
        return mpp_x, mpp_y, "tiff-resolution"
    return None, None, None


def _plausible(mpp: float) -> bool:
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _ome_pixels(tif: tifffile.TiffFile, series_index: int) -> ET.Element | None:
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    if not images:
        return None
    image = images[min(series_index, len(images) - 1)]
    return next((el for el in image if el.tag.endswith("Pixels")), None)


def _ome_physical_size(tif: tifffile.TiffFile, series_index: int) -> tuple[float, float] | None:
    pixels = _ome_pixels(tif, series_index)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        factor = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or factor is None:
            return None
        sizes.append(float(value) * factor)
    return (sizes[0], sizes[1]) if all(_plausible(s) for s in sizes) else None


def _ome_channel_names(tif: tifffile.TiffFile) -> list[str]:
    if not tif.is_ome:
        return []
    pixels = _ome_pixels(tif, 0)
    if pixels is None:
        return []
    return [el.get("Name") for el in pixels if el.tag.endswith("Channel") and el.get("Name")]


def _magnification(tif: tifffile.TiffFile, series_index: int) -> float | None:
    if tif.is_svs:
        value = _svs_metadata(tif).get("AppMag")
        return float(value) if isinstance(value, (int, float)) else None
    if tif.is_ndpi:
        value = (tif.pages.first.ndpi_tags or {}).get("Magnification")
        return float(value) if isinstance(value, (int, float)) else None
    if tif.is_ome:
        try:
            root = ET.fromstring(tif.ome_metadata or "")
        except ET.ParseError:
            return None
        for el in root.iter():
            if el.tag.endswith("Objective") and el.get("NominalMagnification"):
                return float(el.get("NominalMagnification"))
    return None


def _format_name(tif: tifffile.TiffFile) -> str:
    for flag, label in (("is_svs", "aperio-svs"), ("is_ndpi", "hamamatsu-ndpi"), ("is_ome", "ome-tiff")):
        if getattr(tif, flag):
            return label
    return "bigtiff" if tif.is_bigtiff else "tiff"


def _vendor(tif: tifffile.TiffFile) -> str | None:
    if tif.is_svs:
        return "aperio"
    if tif.is_ndpi:
        return "hamamatsu"
    return None


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in values.items() if isinstance(v, (str, int, float, bool)) or v is None}
