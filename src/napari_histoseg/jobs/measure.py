"""The measure job: the one consumer of cells. Cells are found block by block (``analysis.cells.iter_cells``)
and each block's table goes to every sink a front end asks for: the CSV and GeoJSON files, the cellularity map,
the table kept in memory for a readout. The loop is written once, here (:func:`measure_cells`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from ..analysis.cells import CellProgress, CellResult, CellTable, iter_cells, label_array
from ..analysis.cellularity import Cellularity, CellularityGrid, cellularity_readout
from ..io.cell_files import CellCsvWriter, ExportError, Frame, GeoJsonWriter
from ..io.export import (
    is_our_export,
    output_paths,
    software_versions,
    store_digest,
    write_summary_json,
)
from ..io.outputs import check_not_input
from .progress import Job, drive, of_cells

#: Label pixels that are slide pixels, resolution unknown.
SLIDE_FRAME = Frame()


class CellSink(Protocol):
    """Anything that takes the cells of one block after another (the cell-file writers, a map)."""

    def write(self, table: CellTable) -> None: ...


@dataclass
class Measurement:
    """The cells of a label map: totals (``result``), the cellularity map, and the table when it was kept."""

    result: CellResult
    grid: CellularityGrid
    cellularity: Cellularity
    table: CellTable | None = None


def measure_cells(
    source: Any,
    *,
    mpp: float | None = None,
    sinks: Sequence[CellSink] = (),
    grid_px: int = 256,
    keep_table: bool = False,
    **cell_kwargs,
) -> Job[Measurement]:
    """Find the cells of ``source`` (a label array, napari multiscale data or a LabelStore) and hand each block's
    table to every sink; yields a progress event per block, returns a :class:`Measurement`.

    ``mpp``: microns per label px (areas in square microns, and the cell rules in the map's pixels);
    ``keep_table``: keep every cell in memory (a readout; a slide's export streams instead); ``cell_kwargs`` go
    to :func:`~napari_histoseg.analysis.cells.iter_cells`.
    """
    grid = CellularityGrid(tuple(label_array(source, 0).shape), grid_px)
    tables: list[CellTable] = []
    result = None
    for event in iter_cells(source, mpp=mpp, **cell_kwargs):
        if not isinstance(event, CellProgress):
            result = event
            continue
        for sink in sinks:
            sink.write(event.table)
        grid.add(event.table)
        if keep_table:
            tables.append(event.table)
        yield of_cells(event)
    counts, areas = result.counts, result.areas
    cellularity = Cellularity(counts["tumor"], counts["non_tumor"], areas["tumor"], areas["non_tumor"], mpp)
    table = None
    if keep_table:
        table = CellTable.concat(tables) if tables else CellTable.empty(cell_kwargs.get("polygons", False))
    return Measurement(result, grid, cellularity, table)


@dataclass
class Readout:
    """Cells of a result for a widget: the readout (whole result and each region) and the cellularity map."""

    readout: dict
    grid: CellularityGrid


def readout_job(source: Any, regions: Sequence, mpp: float | None, grid_px: int = 256) -> Job[Readout]:
    """Measure a result shown in napari: ``regions`` are polygons in its level-0 pixels; returns a :class:`Readout`
    (the cellularity of the whole and of each region)."""
    measured = yield from measure_cells(source, mpp=mpp, grid_px=grid_px, keep_table=True)
    return Readout(cellularity_readout(measured.table, regions, mpp=mpp), measured.grid)


def _tables(tables: CellTable | Iterable[CellTable]) -> Iterable[CellTable]:
    return [tables] if isinstance(tables, CellTable) else tables


def write_cells_csv(path: str | os.PathLike, tables: CellTable | Iterable[CellTable], frame: Frame = SLIDE_FRAME):
    """Write cells (one table or a stream of them) as CSV; returns the path."""
    with CellCsvWriter(path, frame) as writer:
        for table in _tables(tables):
            writer.write(table)
    return writer.path


def write_cells_geojson(path: str | os.PathLike, tables: CellTable | Iterable[CellTable], frame: Frame = SLIDE_FRAME):
    """Write cells with outlines as QuPath-importable GeoJSON; returns the path."""
    with GeoJsonWriter(path, frame) as writer:
        for table in _tables(tables):
            writer.write(table)
    return writer.path


def _card_dict(model_card: Any) -> dict | None:
    if model_card is None:
        return None
    card = model_card if isinstance(model_card, dict) else model_card.to_dict()
    keep = ("name", "architecture", "sha256", "mpp", "created", "description")
    return {k: card.get(k) for k in keep if k in card}


def build_summary(
    measured: Measurement,
    *,
    frame: Frame = SLIDE_FRAME,
    model_card: Any = None,
    settings: dict | None = None,
    files: dict | None = None,
    source: str | None = None,
) -> dict:
    """The run summary: cell counts, cellularity and its map, model and its sha256, software versions, settings."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "label_shape": list(measured.result.shape),
        "downsample": frame.downsample,
        "mpp": frame.mpp,
        "cellularity": measured.cellularity.to_dict(),
        "cells": measured.result.summary(),
        "model": _card_dict(model_card),
        "versions": software_versions(),
        "settings": settings or {},
        "files": files or {},
        "cellularity_map": measured.grid.to_dict(),
    }


def _export_paths(store: Any, out, geojson: bool) -> dict:
    """Where the exports go, after checking that nothing there is someone else's (refused, naming it)."""
    paths = output_paths(store.path, out)
    if not geojson:
        del paths["cells_geojson"]
    source = store.info.get("source")
    for name, path in paths.items():
        if not path.parent.is_dir():
            raise ExportError(f"{path}: the folder {path.parent} does not exist")
        if source:
            check_not_input(path, [source])
        if path.exists() and not is_our_export(name, path):
            raise ExportError(f"{path} exists and was not written by histoseg; not replaced (move it)")
    return paths


def slide_outputs_job(
    store: Any,
    out: str | os.PathLike | None = None,
    *,
    mpp: float | None = None,
    model_card: Any = None,
    settings: dict | None = None,
    grid_px: int = 256,
    geojson: bool = True,
    **cell_kwargs,
) -> Job[dict]:
    """Cells CSV, QuPath GeoJSON and summary JSON for a finished LabelStore, in one streaming pass.

    Outlines for the GeoJSON cost most of the time (about 4x the extraction alone); ``geojson=False`` skips them.
    ``out``: folder or prefix (``io.export.output_paths``); ``mpp``: microns per slide level-0 px (default: from
    the store); ``settings``: the run's settings, recorded in the summary; ``grid_px``: square size of the
    cellularity map (label px); ``cell_kwargs`` go to ``iter_cells``. Returns ``{"files": {name: path},
    "cellularity": dict, "cells": int, "summary": dict}``.
    """
    frame = Frame.of_store(store, mpp=mpp)
    paths = _export_paths(store, out, geojson)
    # The summary says the other files are whole: it goes first and comes back last.
    paths["summary_json"].unlink(missing_ok=True)
    cell_kwargs.setdefault("block", int(store.info.get("block", 2048)))
    with contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(CellCsvWriter(paths["cells_csv"], frame))]
        if geojson:
            sinks.append(stack.enter_context(GeoJsonWriter(paths["cells_geojson"], frame)))
        measured = yield from measure_cells(
            store, mpp=frame.label_mpp, sinks=sinks, grid_px=grid_px, polygons=geojson, **cell_kwargs
        )
    files = {k: str(v) for k, v in paths.items()}
    summary = build_summary(
        measured,
        frame=frame,
        model_card=model_card if model_card is not None else store.info.get("model"),
        settings={**(store.info.get("settings") or {}), **(settings or {}), "cells": measured.result.settings},
        files=files,
        source=store.info.get("source"),
    )
    summary["store_digest"] = store_digest(store)
    summary["file_sizes"] = {k: v.stat().st_size for k, v in paths.items() if k != "summary_json"}
    write_summary_json(paths["summary_json"], summary)
    return {
        "files": files,
        "cellularity": measured.cellularity.to_dict(),
        "cells": measured.result.cells,
        "summary": summary,
    }


def write_slide_outputs(store: Any, out: str | os.PathLike | None = None, *, on_event=None, **kwargs) -> dict:
    """:func:`slide_outputs_job` run to its end; ``on_event`` sees each progress event."""
    return drive(slide_outputs_job(store, out, **kwargs), on_event)
