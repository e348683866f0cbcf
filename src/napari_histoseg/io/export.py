"""Exports: cells as CSV and as QuPath GeoJSON, a run summary as JSON, class labels as pyramidal TIFF or OME-Zarr.

Coordinates are written in the slide's pixel frame (level 0 of the slide the labels were computed from), so they
line up with the slide in napari and in QuPath: a label map computed at a slide level with downsample ``d`` has
its pixel (r, c) covering slide pixels [r*d, (r+1)*d) x [c*d, (c+1)*d).

- CSV centroids use the numpy / napari convention (pixel i is centred on coordinate i).
- GeoJSON uses QuPath's convention (pixel i spans [i, i+1)), so outlines are shifted by half a pixel.

Every writer streams: cells are written table by table, labels tile by tile; nothing slide-sized is held.
Cell files are written under a temporary name and renamed when whole, and the summary, written last, records
each file's size: an interrupted export never leaves a file that looks complete (:func:`exports_whole`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.cells import CellProgress, CellResult, CellTable, iter_cells, label_array
from ..analysis.cellularity import Cellularity, CellularityGrid
from ..classes import CLASS_COLORS, CLASS_NAMES, NON_TUMOR, TUMOR
from ..fileio import atomic_write, json_safe
from .outputs import check_not_input, remove_label_image
from .store import ome_label_metadata

log = logging.getLogger(__name__)

#: QuPath class names: "Tumor" is one of QuPath's built-in classes.
QUPATH_NAMES = {TUMOR: "Tumor", NON_TUMOR: "Non-tumor"}
CSV_COLUMNS = (
    "id",
    "class",
    "class_name",
    "centroid_y_px",
    "centroid_x_px",
    "centroid_y_um",
    "centroid_x_um",
    "area_px",
    "area_um2",
)


class ExportError(ValueError):
    """An export that cannot be written as asked (names the file and the problem)."""


@dataclass(frozen=True)
class Frame:
    """How label-map pixels map to the slide: ``downsample`` slide px per label px, ``mpp`` microns per slide px."""

    downsample: float = 1.0
    mpp: float | None = None

    @classmethod
    def of_store(cls, store: Any, level: int = 0, mpp: float | None = None) -> Frame:
        """The frame of a LabelStore level; ``mpp`` (microns per slide level-0 px) overrides the store's."""
        info = store.info
        downsample = float(info.get("downsample") or 1.0) * (1 << level)
        if mpp is None and info.get("mpp"):
            mpp = float(info["mpp"]) / float(info.get("downsample") or 1.0)  # store mpp is per label px
        return cls(downsample, mpp)

    @property
    def label_mpp(self) -> float | None:
        """Microns per label-map pixel."""
        return self.mpp * self.downsample if self.mpp else None

    def to_slide(self, coords: np.ndarray) -> np.ndarray:
        """Label-map pixel-centre coordinates -> slide level-0 pixel-centre coordinates."""
        return (np.asarray(coords, np.float64) + 0.5) * self.downsample - 0.5


# -- cells ------------------------------------------------------------------------------------------------------


class _PartFile:
    """A text file written as ``.<name>.part`` beside ``path`` and renamed to ``path`` only when closed whole."""

    def __init__(self, path: Path, newline: str | None = None):
        self.path = path
        self.part = path.with_name(f".{path.name}.part")
        self.file = open(self.part, "w", newline=newline)  # noqa: SIM115 - closed in close() / abort()

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.part, self.path)

    def abort(self) -> None:
        self.file.close()
        self.part.unlink(missing_ok=True)


class CellCsvWriter:
    """Writes cell tables to a CSV file, one table at a time (columns :data:`CSV_COLUMNS`)."""

    def __init__(self, path: str | os.PathLike, frame: Frame = Frame()):
        self.path, self.frame = Path(path), frame
        self._part = _PartFile(self.path, newline="")
        self._file = self._part.file
        self._csv = csv.writer(self._file)
        self._csv.writerow(CSV_COLUMNS)

    def write(self, table: CellTable) -> None:
        if not len(table):
            return
        f = self.frame
        y, x = f.to_slide(table.y), f.to_slide(table.x)
        area = table.area * f.downsample**2
        names = np.array([""] + list(CLASS_NAMES[1:]), dtype=object)[table.cls]
        if f.mpp:
            um = [np.round(y * f.mpp, 3), np.round(x * f.mpp, 3), np.round(area * f.mpp**2, 3)]
        else:
            um = [np.full(len(table), "", object)] * 3
        rows = zip(
            table.id.tolist(),
            table.cls.tolist(),
            names.tolist(),
            np.round(y, 3).tolist(),
            np.round(x, 3).tolist(),
            um[0].tolist(),
            um[1].tolist(),
            _number_list(area),
            um[2].tolist(),
            strict=True,
        )
        self._csv.writerows(rows)

    def close(self) -> None:
        """Finish the file: only now does it appear under its name."""
        self._part.commit()

    def __enter__(self) -> CellCsvWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._part.abort() if exc_type is not None else self.close()


def _number_list(values: np.ndarray) -> list:
    """Integers stay integers in the CSV (areas at downsample 1)."""
    return values.astype(np.int64).tolist() if np.all(values == np.round(values)) else np.round(values, 3).tolist()


class GeoJsonWriter:
    """Writes cells as a GeoJSON FeatureCollection that QuPath imports as detections, streaming.

    Each feature is a Polygon (outline in slide pixels, QuPath pixel-corner convention) with
    ``properties.objectType = "detection"``, ``classification = {"name", "color"}`` and measurements.
    """

    def __init__(self, path: str | os.PathLike, frame: Frame = Frame()):
        self.path, self.frame = Path(path), frame
        self._part = _PartFile(self.path)
        self._file = self._part.file
        self._file.write('{"type": "FeatureCollection", "features": [\n')
        self._first = True

    def write(self, table: CellTable) -> None:
        if not len(table):
            return
        if table.polygons is None:
            raise ExportError(f"{self.path}: GeoJSON needs cell outlines; extract cells with polygons=True")
        d, mpp = self.frame.downsample, self.frame.mpp
        for i in range(len(table)):
            cls = int(table.cls[i])
            ring = table.polygons[i]
            # (y, x) label pixel-centre -> [x, y] slide px, pixel-corner convention: (v + 0.5) * d.
            coords = np.round((ring[:, ::-1] + 0.5) * d, 2).tolist()
            area = float(table.area[i]) * d * d
            measurements = {"Area px": area}
            if mpp:
                measurements["Area um^2"] = round(area * mpp * mpp, 3)
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [coords]},
                "properties": {
                    "objectType": "detection",
                    "name": f"cell {int(table.id[i])}",
                    "classification": {"name": QUPATH_NAMES[cls], "color": CLASS_COLORS[cls].tolist()},
                    "measurements": measurements,
                },
            }
            self._file.write(("" if self._first else ",\n") + json.dumps(feature, separators=(",", ":")))
            self._first = False

    def close(self) -> None:
        """Finish the FeatureCollection: only now does the file appear under its name."""
        self._file.write("\n]}\n")
        self._part.commit()

    def __enter__(self) -> GeoJsonWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._part.abort() if exc_type is not None else self.close()


def write_cells_csv(path: str | os.PathLike, tables: CellTable | Iterable[CellTable], frame: Frame = Frame()) -> Path:
    """Write cells (one table or a stream of them) as CSV; returns the path."""
    with CellCsvWriter(path, frame) as writer:
        for table in [tables] if isinstance(tables, CellTable) else tables:
            writer.write(table)
    return Path(path)


def write_cells_geojson(
    path: str | os.PathLike, tables: CellTable | Iterable[CellTable], frame: Frame = Frame()
) -> Path:
    """Write cells with outlines as QuPath-importable GeoJSON; returns the path."""
    with GeoJsonWriter(path, frame) as writer:
        for table in [tables] if isinstance(tables, CellTable) else tables:
            writer.write(table)
    return Path(path)


# -- summary ----------------------------------------------------------------------------------------------------


def software_versions() -> dict[str, str]:
    """Versions of this package and the libraries results depend on (read without importing them)."""
    versions = {"python": platform.python_version()}
    for name in ("napari-histoseg", "numpy", "scipy", "scikit-image", "zarr", "tifffile", "torch", "napari"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def _card_dict(model_card: Any) -> dict | None:
    if model_card is None:
        return None
    card = model_card.to_dict() if hasattr(model_card, "to_dict") else dict(model_card)
    keep = ("name", "architecture", "sha256", "mpp", "created", "description")
    return {k: card.get(k) for k in keep if k in card}


def build_summary(
    result: CellResult,
    cellularity: Cellularity,
    *,
    frame: Frame = Frame(),
    model_card: Any = None,
    settings: dict | None = None,
    grid: CellularityGrid | None = None,
    files: dict | None = None,
    source: str | None = None,
) -> dict:
    """The run summary: cell counts, cellularity, model and its sha256, software versions, settings."""
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "label_shape": list(result.shape),
        "downsample": frame.downsample,
        "mpp": frame.mpp,
        "cellularity": cellularity.to_dict(),
        "cells": result.summary(),
        "model": _card_dict(model_card),
        "versions": software_versions(),
        "settings": settings or {},
        "files": files or {},
    }
    if grid is not None:
        summary["cellularity_map"] = grid.to_dict()
    return summary


def write_summary_json(path: str | os.PathLike, summary: dict) -> Path:
    """Write a summary dict as JSON (NaN written as null), atomically."""
    path = Path(path)
    atomic_write(path, json.dumps(json_safe(summary), indent=2).encode())
    return path


def store_digest(store: Any) -> str:
    """A short fingerprint of a store's labels (shape, settings, each finished block's class counts): exports
    record the labels they were made from."""
    from .. import __version__

    blocks = sorted([*index, *counts] for index, counts in store.done_blocks().items())
    record = {"shape": store.info.get("shape"), "settings": store.info.get("settings"), "blocks": blocks}
    record["version"] = __version__  # the cell rules are this version's
    return hashlib.sha256(json.dumps(json_safe(record), sort_keys=True).encode()).hexdigest()[:16]


def exports_whole(store: Any, out: str | os.PathLike | None = None, *, geojson: bool = True) -> dict | None:
    """The summary of the exports of ``store`` when they are all there and whole, else ``None``.

    Whole: the summary (written last) parses, belongs to this run of the store, asks for the same files, and
    every file it lists has the size it recorded.
    """
    paths = output_paths(store.path, out)
    if not geojson:
        del paths["cells_geojson"]
    try:
        summary = json.loads(paths["summary_json"].read_text())
        sizes = summary["file_sizes"]
        if summary.get("store_digest") != store_digest(store) or set(sizes) != set(paths) - {"summary_json"}:
            return None
        for name, size in sizes.items():
            if paths[name].stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return summary


# -- the slide outputs ------------------------------------------------------------------------------------------


def output_paths(store_path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where :func:`write_slide_outputs` writes: ``<prefix>_cells.csv``, ``_cells.geojson``, ``_summary.json``.

    ``out`` is a folder (existing, or ending in a separator) to write ``<store stem>_*`` into, or a prefix;
    by default the prefix is the store path without its suffix (the files sit next to the store).
    """
    store_path = Path(store_path)
    if out is None:
        prefix = store_path.with_suffix("")
    elif Path(out).is_dir() or str(out).endswith(os.sep):
        prefix = Path(out) / store_path.with_suffix("").name
    else:
        prefix = Path(out)
    return {
        "cells_csv": prefix.with_name(prefix.name + "_cells.csv"),
        "cells_geojson": prefix.with_name(prefix.name + "_cells.geojson"),
        "summary_json": prefix.with_name(prefix.name + "_summary.json"),
    }


#: How each export begins: an existing file that does not is someone else's and is never replaced.
_EXPORT_STARTS = {
    "cells_csv": ",".join(CSV_COLUMNS).encode(),
    "cells_geojson": b'{"type": "FeatureCollection"',
    "summary_json": b'{\n  "created":',
}


def _is_our_export(name: str, path: Path) -> bool:
    start = _EXPORT_STARTS[name]
    try:
        with open(path, "rb") as f:
            head = f.read(len(start))
            return head == start or not head  # empty: cut short before its first line
    except OSError:
        return False


def write_slide_outputs(
    store: Any,
    out: str | os.PathLike | None = None,
    *,
    mpp: float | None = None,
    model_card: Any = None,
    settings: dict | None = None,
    grid_px: int = 256,
    geojson: bool = True,
    on_event=None,
    **cell_kwargs,
) -> dict:
    """Cells CSV, QuPath GeoJSON and summary JSON for a finished LabelStore, in one streaming pass.

    Outlines for the GeoJSON cost most of the time (about 4x the extraction alone); ``geojson=False`` skips them.

    ``out``: folder or prefix (see :func:`output_paths`); ``mpp``: microns per slide level-0 px (default: from the
    store); ``settings``: the run's settings, recorded in the summary; ``grid_px``: square size of the cellularity
    map (label px); ``on_event`` gets each :class:`~napari_histoseg.analysis.cells.CellProgress`; ``cell_kwargs`` go to
    :func:`~napari_histoseg.analysis.cells.iter_cells`. Returns ``{"files": {name: path}, "cellularity": dict,
    "cells": int, "summary": dict}``.
    """
    frame = Frame.of_store(store, mpp=mpp)
    paths = output_paths(store.path, out)
    if not geojson:
        del paths["cells_geojson"]
    source = store.info.get("source")
    for name, path in paths.items():
        if not path.parent.is_dir():
            raise ExportError(f"{path}: the folder {path.parent} does not exist")
        if source:
            check_not_input(path, [source])
        if path.exists() and not _is_our_export(name, path):
            raise ExportError(f"{path} exists and was not written by histoseg; not replaced (move it)")
    # The summary says the other files are whole: it goes first and comes back last.
    paths["summary_json"].unlink(missing_ok=True)
    labels = label_array(store, 0)
    grid = CellularityGrid(tuple(labels.shape), grid_px)
    cell_kwargs.setdefault("block", int(store.info.get("block", 2048)))
    cell_kwargs.setdefault("mpp", frame.label_mpp)  # the cell rules in the map's pixels
    result = None
    with contextlib.ExitStack() as stack:
        csv_out = stack.enter_context(CellCsvWriter(paths["cells_csv"], frame))
        geo = stack.enter_context(GeoJsonWriter(paths["cells_geojson"], frame)) if geojson else None
        for event in iter_cells(store, polygons=geojson, **cell_kwargs):
            if isinstance(event, CellProgress):
                csv_out.write(event.table)
                if geo is not None:
                    geo.write(event.table)
                grid.add(event.table)
                if on_event is not None:
                    on_event(event)
            else:
                result = event
    cellularity = Cellularity(
        result.counts["tumor"],
        result.counts["non_tumor"],
        result.areas["tumor"],
        result.areas["non_tumor"],
        frame.label_mpp,
    )
    files = {k: str(v) for k, v in paths.items()}
    summary = build_summary(
        result,
        cellularity,
        frame=frame,
        model_card=model_card if model_card is not None else store.info.get("model"),
        settings={**(store.info.get("settings") or {}), **(settings or {}), "cells": result.settings},
        grid=grid,
        files=files,
        source=source,
    )
    summary["store_digest"] = store_digest(store)
    summary["file_sizes"] = {k: v.stat().st_size for k, v in paths.items() if k != "summary_json"}
    write_summary_json(paths["summary_json"], summary)
    return {"files": files, "cellularity": cellularity.to_dict(), "cells": result.cells, "summary": summary}


# -- labels -----------------------------------------------------------------------------------------------------


def _label_levels(source: Any, min_side: int = 256) -> list[Any]:
    """The pyramid of a label source: a LabelStore's or multiscale list's levels, else level 0 strided by 2**k."""
    if hasattr(source, "levels") and hasattr(source, "info"):
        return list(source.levels)
    if isinstance(source, (list, tuple)):
        return [label_array(source, k) for k in range(len(source))]
    base = label_array(source, 0)
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
    if mpp is None and hasattr(source, "info"):
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
    if hasattr(source, "info") and hasattr(source, "levels"):
        items += list(source.levels)
    roots = [Path(item.path) for item in items if hasattr(item, "info") and hasattr(item, "path")]
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
    if mpp is None and hasattr(source, "info"):
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
