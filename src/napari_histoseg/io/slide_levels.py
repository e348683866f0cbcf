"""A TIFF series' pixels as lazy ``(H, W, 3) uint8`` dask levels, and the checks that refuse what is no RGB slide.

Chunks are whole multiples of the file's tiles near :data:`TARGET_CHUNK`; uncompressed data are memory-mapped;
16-bit RGB is scaled by its real range; levels missing from the file are built by 2x2 averaging.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from ..pixels import scale_to_uint8, white_level
from .slide_metadata import ome_channel_names

logger = logging.getLogger(__name__)

#: Dask chunks are the whole multiple of the file's tile closest to this size (in pixels).
TARGET_CHUNK = 1024


class SlideError(ValueError):
    """A slide file cannot be opened: the message names the file and the problem."""


class UnsupportedSlideError(SlideError):
    """A readable image that is not a brightfield RGB slide (fluorescence, 16-bit greyscale, stacks...)."""


def classify(series: tifffile.TiffPageSeries, name: str, tif: tifffile.TiffFile) -> str:
    """Return 'rgb', 'rgba', 'rgb16', 'planar-rgb', 'grey' or 'grey-inverted'; raise for anything else."""
    axes, shape, dtype = series.axes, series.shape, series.dtype
    photometric = series.keyframe.photometric
    is_colour = photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    described = f"axes {axes}, shape {tuple(shape)}, {dtype}"
    if dtype not in (np.uint8, np.uint16):
        raise UnsupportedSlideError(f"{name}: {dtype} pixel data ({described}); expected an 8-bit RGB slide")
    if "C" in axes or (axes == "YXS" and not is_colour) or (axes == "YXS" and shape[-1] not in (3, 4)):
        channels = shape[axes.index("C")] if "C" in axes else shape[-1]
        names = ome_channel_names(tif)
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


def to_rgb(level: da.Array, kind: str, white: int = 255) -> da.Array:
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


def white_of(source: Any, kind: str, name: str) -> int:
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


def as_dask(source: Any, level_series: tifffile.TiffPageSeries) -> da.Array:
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


def memmap_or_none(
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


def halve(level: da.Array) -> da.Array:
    """Lazily average 2x2 pixel blocks, keeping chunks near TARGET_CHUNK."""
    h, w = level.shape[:2]
    even = level[: h - h % 2, : w - w % 2]
    chunk = max(2, (min(level.chunksize[0], level.chunksize[1]) // 2) * 2)
    even = even.rechunk((chunk, chunk, 3))
    half = da.coarsen(np.mean, even, {0: 2, 1: 2}, trim_excess=True, dtype=np.float32)
    half = (half + 0.5).astype(np.uint8)
    target = min(TARGET_CHUNK, max(half.shape[:2]))
    return half.rechunk((target, target, 3))


def probe(source: Any, name: str, series: tifffile.TiffPageSeries) -> None:
    """Decode one tile of the smallest file level so a missing codec or corrupt data fails at open."""
    try:
        np.asarray(source[:1, :1])  # read the zarr array directly: one tile, no dask scheduler start-up
    except Exception as exc:
        compression = series.keyframe.compression.name
        raise SlideError(f"{name}: cannot decode the pixel data ({compression}): {type(exc).__name__}: {exc}") from exc


def check_not_truncated(series: tifffile.TiffPageSeries, name: str, file_size: int) -> None:
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
