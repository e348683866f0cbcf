"""Cell files: cells as CSV and as QuPath GeoJSON, written table by table (nothing slide-sized is held).

Coordinates are written in the slide's pixel frame (level 0 of the slide the labels were computed from), so they
line up with the slide in napari and in QuPath: a label map computed at a slide level with downsample ``d`` has
its pixel (r, c) covering slide pixels [r*d, (r+1)*d) x [c*d, (c+1)*d).

- CSV centroids use the numpy / napari convention (pixel i is centred on coordinate i).
- GeoJSON uses QuPath's convention (pixel i spans [i, i+1)), so outlines are shifted by half a pixel.

A table is any object with the per-cell arrays ``id``, ``cls``, ``y``, ``x``, ``area`` (label px) and, for
GeoJSON, ``polygons`` ((K, 2) (y, x) outlines), as ``analysis.cells.CellTable`` has: IO needs no analysis code.
Each file is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import CLASS_COLORS, CLASS_NAMES, NON_TUMOR, TUMOR


class ExportError(ValueError):
    """An export that cannot be written as asked (names the file and the problem)."""


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

    def write(self, table: Any) -> None:
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

    def write(self, table: Any) -> None:
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
