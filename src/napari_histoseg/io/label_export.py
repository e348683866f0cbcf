"""Class labels as a tiled pyramidal TIFF or an OME-Zarr label image, written tile by tile."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import CLASS_NAMES
from .cell_files import ExportError, Frame
from .outputs import remove_label_image
from .store import LabelStore, ome_label_metadata


def _level(source: Any, k: int) -> Any:
    """Level ``k`` of a multiscale list, or the 2-D array itself (k 0)."""
    array = source[k] if isinstance(source, (list, tuple)) else source
    return array if hasattr(array, "__getitem__") and hasattr(array, "shape") else np.asarray(array)


def _label_levels(source: Any, min_side: int = 256) -> list[Any]:
    """The pyramid of a label source: a LabelStore's or multiscale list's levels, else level 0 strided by 2**k."""
    if isinstance(source, LabelStore):
        return list(source.levels)
    if isinstance(source, (list, tuple)):
        return [_level(source, k) for k in range(len(source))]
    base = _level(source, 0)
    levels = [base]
    k = 1
    while max(base.shape) >> k >= min_side:
        levels.append(_Strided(base, 1 << k))
        k += 1
    return levels


class _Strided:
    """A lazy ``base[::step, ::step]`` that reads only the region asked for (nearest, like the store's pyramid)."""

    def __init__(self, base: Any, step: int):
        self.base, self.step = base, step
        self.shape = (-(-base.shape[0] // step), -(-base.shape[1] // step))
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        s = self.step
        return np.asarray(self.base[ys.start * s : ys.stop * s : s, xs.start * s : xs.stop * s : s])


def _check_labels(path: Path, levels: list[Any]) -> None:
    if len(levels[0].shape) != 2:
        raise ExportError(f"{path}: labels must be 2-D (y, x), got shape {tuple(levels[0].shape)}")


def _tiles(level: Any, tile: int):
    height, width = level.shape
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            data = np.asarray(level[y : min(y + tile, height), x : min(x + tile, width)], dtype=np.uint8)
            if data.shape != (tile, tile):  # tifffile wants full tiles; pad the edge ones
                data = np.pad(data, ((0, tile - data.shape[0]), (0, tile - data.shape[1])))
            yield data


def write_labels_tiff(
    source: Any,
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    tile: int = 512,
    compression: str = "zlib",
) -> Path:
    """Write class labels as a tiled pyramidal TIFF (sub-resolutions as SubIFDs), tile by tile.

    ``source``: a LabelStore (its pyramid is copied), napari multiscale data, or a 2-D array (pyramid by striding).
    ``mpp``: microns per pixel of level 0, written as the resolution (and OME PhysicalSize for ``.ome.tif``).
    """

    path = Path(path)
    if tile % 16:
        raise ExportError(f"{path}: TIFF tile size must be a multiple of 16, got {tile}")
    levels = _label_levels(source)
    _check_labels(path, levels)
    if mpp is None and isinstance(source, LabelStore):
        mpp = Frame.of_store(source).label_mpp
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    metadata = {"axes": "YX"}
    if mpp and ome:
        metadata.update({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm"})
    part = path.with_name(f".{path.name}.part")  # renamed when whole: a cut-short TIFF never takes the name
    try:
        _write_tiff_levels(part, levels, mpp, tile, compression, ome, metadata)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def _write_tiff_levels(
    path: Path, levels: list[Any], mpp: float | None, tile: int, compression: str, ome: bool, metadata: dict
) -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=levels[0].shape[0] * levels[0].shape[1] > 2**31, ome=ome) as tif:
        for k, level in enumerate(levels):
            options = {
                "shape": tuple(level.shape),
                "dtype": np.uint8,
                "tile": (tile, tile),
                "compression": compression,
                "photometric": "minisblack",
            }
            if mpp:
                per_cm = 1e4 / (mpp * (1 << k))
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0:
                options.update(subifds=len(levels) - 1, metadata=metadata if ome else None)
                if not ome:
                    options["description"] = json.dumps({"classes": list(CLASS_NAMES)})
            else:
                options.update(subfiletype=1, metadata=None)
            tif.write(_tiles(level, tile), **options)


def _source_roots(source: Any) -> list[Path]:
    """Folders the labels of ``source`` are read from (a LabelStore's, zarr arrays' local stores)."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if isinstance(source, LabelStore):
        items += list(source.levels)
    roots = [Path(item.path) for item in items if isinstance(item, LabelStore)]
    for item in items:
        root = getattr(getattr(item, "store", None), "root", None)
        if root is not None:
            roots.append(Path(str(root)))
    return roots


def write_labels_ome_zarr(
    source: Any,
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    chunk: int = 512,
    overwrite: bool = False,
) -> Path:
    """Write class labels as an OME-Zarr (NGFF 0.5, zarr v3) label image with its pyramid, chunk-aligned blocks.

    The group carries ``multiscales`` (scale in microns when ``mpp`` is known) and ``image-label`` colours and
    class names, like the LabelStore the engine writes.
    """
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; remove it or pass overwrite=True")
    levels = _label_levels(source)
    _check_labels(path, levels)
    if mpp is None and isinstance(source, LabelStore):
        mpp = Frame.of_store(source).label_mpp
    # Only a label image is replaced, never the store the labels are read from, nor a folder of other files.
    remove_label_image(path, _source_roots(source))
    group = zarr.open_group(str(path), mode="w")
    step = chunk * 4
    for k, level in enumerate(levels):
        height, width = level.shape
        array = group.create_array(
            str(k),
            shape=(height, width),
            chunks=(min(chunk, height), min(chunk, width)),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
        )
        for y in range(0, height, step):
            for x in range(0, width, step):
                block = np.asarray(level[y : min(y + step, height), x : min(x + step, width)], dtype=np.uint8)
                if block.any():
                    array[y : y + block.shape[0], x : x + block.shape[1]] = block
    base = mpp or 1.0
    group.attrs.update({"ome": ome_label_metadata(len(levels), (base, base), "micrometer" if mpp else None)})
    return path
