"""Helpers that write small test slides with tifffile (pyramids, single-level files, fluorescence files).

Pixel content comes from the CC0 H&E sample shipped in the package: real tissue without ../shared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import tifffile

SAMPLE_NAME = "cmu-1-small-region.svs"


@lru_cache(maxsize=1)
def _sample_rgb() -> np.ndarray:
    with as_file(files("napari_histoseg") / "samples" / SAMPLE_NAME) as path:
        image = tifffile.imread(path, series=0)
    image.setflags(write=False)
    return image


def real_tissue(height: int, width: int, *, y: int = 1200, x: int = 600) -> np.ndarray:
    """An (height, width, 3) uint8 crop of real H&E tissue (the shipped sample, mirror-tiled if larger)."""
    sample = _sample_rgb()
    rows = np.arange(y, y + height) % (2 * sample.shape[0])
    cols = np.arange(x, x + width) % (2 * sample.shape[1])
    # Mirror instead of wrap so a tiled image has no seams.
    rows = np.where(rows < sample.shape[0], rows, 2 * sample.shape[0] - 1 - rows)
    cols = np.where(cols < sample.shape[1], cols, 2 * sample.shape[1] - 1 - cols)
    return np.ascontiguousarray(sample[np.ix_(rows, cols)])


def downsample2(image: np.ndarray) -> np.ndarray:
    """2x2 mean downsampling of an (H, W, ...) image (odd last row/column dropped)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].reshape(h // 2, 2, w // 2, 2, *image.shape[2:]).astype(np.float32)
    return (blocks.mean(axis=(1, 3)) + 0.5).astype(image.dtype)


def write_pyramid(
    path: str | os.PathLike,
    image: np.ndarray,
    levels: int | Sequence[np.ndarray] = 3,
    *,
    tile: int | None = 256,
    compression: str | None = "jpeg",
    ome: bool = False,
    bigtiff: bool = False,
    mpp: float | None = None,
    subifds: bool = True,
    photometric: str | None = None,
) -> Path:
    """Write ``image`` (level 0) and lower levels as a pyramidal TIFF; return the path.

    ``levels`` is the number of levels (each half the previous, 2x2 mean) or the list of level arrays.
    Lower levels go to SubIFDs (OME-TIFF style) when ``subifds``, else to following pages marked reduced.
    ``tile=None`` writes strips. ``mpp`` goes to OME PhysicalSize (``ome=True``) or to TIFF resolution tags.
    """
    path = Path(path)
    if isinstance(levels, int):
        stack = [image]
        for _ in range(levels - 1):
            stack.append(downsample2(stack[-1]))
    else:
        stack = list(levels)
    if photometric is None:
        photometric = "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack"
    options: dict = {"photometric": photometric, "compression": compression}
    if tile is not None:
        options["tile"] = (tile, tile)
    metadata: dict | None = None
    resolution: dict = {}
    if mpp is not None:
        if ome:
            metadata = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm"}
            metadata["PhysicalSizeYUnit"] = "µm"
        else:
            resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as tw:
        n_sub = len(stack) - 1 if subifds else None
        tw.write(stack[0], subifds=n_sub, metadata=metadata, **resolution, **options)
        for level in stack[1:]:
            tw.write(level, subfiletype=1, metadata=None, **options)
    return path


def write_fluorescence(path: str | os.PathLike, *, channels: int = 4, size: int = 256) -> Path:
    """Write an OME-TIFF with ``channels`` uint16 planes (CYX) and channel names (fluorescence)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(channels, size, size), dtype=np.uint16)
    names = ["DAPI", "FITC", "Cy3", "Cy5", "Cy7"][:channels] + [f"ch{i}" for i in range(5, channels)]
    tifffile.imwrite(
        path,
        data,
        ome=True,
        photometric="minisblack",
        tile=(128, 128),
        metadata={"axes": "CYX", "Channel": {"Name": names}},
    )
    return Path(path)


def truncate(source: str | os.PathLike, target: str | os.PathLike, fraction: float = 0.6) -> Path:
    """Copy the first ``fraction`` of ``source`` to ``target`` (a download cut short)."""
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[: int(len(data) * fraction)])
    return Path(target)


def corrupt(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy ``source`` keeping the TIFF signature but overwriting the header's IFD offset and first IFD."""
    data = bytearray(Path(source).read_bytes())
    data[4:64] = b"\xff" * 60
    Path(target).write_bytes(bytes(data))
    return Path(target)
