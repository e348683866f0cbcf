"""Export records: where a slide's exports go, which files histoseg wrote, and whether they are whole.

The writers themselves: :mod:`.cell_files` (cells as CSV and GeoJSON) and :mod:`.label_export` (labels as TIFF
or OME-Zarr); the job that measures a store and writes its exports is ``napari_histoseg.jobs.measure``. The
summary, written last, records each file's size: an interrupted export never leaves a file that looks complete
(:func:`exports_whole`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, json_safe
from .cell_files import CSV_COLUMNS, CellCsvWriter, ExportError, Frame, GeoJsonWriter
from .label_export import write_labels_ome_zarr, write_labels_tiff

__all__ = [
    "CSV_COLUMNS",
    "CellCsvWriter",
    "ExportError",
    "Frame",
    "GeoJsonWriter",
    "exports_whole",
    "is_our_export",
    "output_paths",
    "software_versions",
    "store_digest",
    "write_labels_ome_zarr",
    "write_labels_tiff",
    "write_summary_json",
]


def software_versions() -> dict[str, str]:
    """Versions of this package and the libraries results depend on (read without importing them)."""
    versions = {"python": platform.python_version()}
    for name in ("napari-histoseg", "numpy", "scipy", "scikit-image", "zarr", "tifffile", "torch", "napari"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


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


def output_paths(store_path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where ``jobs.measure.write_slide_outputs`` writes: ``<prefix>_cells.csv``, ``_cells.geojson``, ``_summary.json``.

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


def is_our_export(name: str, path: Path) -> bool:
    start = _EXPORT_STARTS[name]
    try:
        with open(path, "rb") as f:
            head = f.read(len(start))
            return head == start or not head  # empty: cut short before its first line
    except OSError:
        return False
