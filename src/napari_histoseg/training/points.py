"""Point-labelled folders: an image per file and a point per annotated cell.

Layout of a point set ``DIR``::

    DIR/input/<name>.<png|jpg|jpeg|tif|tiff>   the H&E image
    DIR/points/<name>.csv                       header ``y,x,class``: pixel coordinates in that image, an integer class
    DIR/points.json                             optional: {"mpp": 0.5, "tumor_classes": [2], "class_names": {...}}

Only annotated cells have a point: a nucleus without one is unlabelled, not background. Which point classes are
tumor, and the folder's resolution, come from options or from ``points.json`` (options win). As for colour masks,
every problem is collected over the whole folder and raised at once (:class:`~.data.DatasetError`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image_files import read_image
from .pair_folders import DatasetError, input_images, visible_files

POINTS_DIR = "points"
METADATA = "points.json"
HEADER = ("y", "x", "class")


@dataclass(frozen=True)
class PointSpec:
    """How to read a point set: its resolution (um/px, None when unknown) and which point classes are tumor."""

    mpp: float | None
    tumor_classes: tuple[int, ...]


@dataclass(frozen=True)
class PointFile:
    """One image of a point set and its CSV of points."""

    name: str
    image: Path
    points: Path


@dataclass
class PointSample:
    """A decoded point-labelled image: image (H, W, 3) uint8, points (N, 2) float (row, col), classes (N,) int."""

    name: str
    image: np.ndarray
    points: np.ndarray
    classes: np.ndarray
    mpp: float | None

    def is_tumor(self, spec: PointSpec) -> np.ndarray:
        """Boolean (N,): which points are tumor cells under ``spec``."""
        return np.isin(self.classes, spec.tumor_classes)


def is_point_set(root: str | Path) -> bool:
    """True when ``root`` holds ``points/`` beside ``input/`` (rather than a colour-mask ``gt/``)."""
    root = Path(root)
    return (root / POINTS_DIR).is_dir() and (root / "input").is_dir()


def site_of(name: str) -> str:
    """The hospital of a TCGA image name: its second field (``TCGA-A7-A0D9-...`` -> ``A7``), else ``"?"``."""
    parts = name.split("-")
    return parts[1] if len(parts) > 2 and parts[0].upper() == "TCGA" else "?"


def read_spec(root: str | Path, *, mpp: float | None = None, tumor_classes: Iterable[int] | None = None) -> PointSpec:
    """The spec of the point set at ``root``: the options given, else ``root/points.json``.

    Raises :class:`DatasetError` when no tumor classes are given either way, or when the metadata is invalid.
    """
    root = Path(root)
    meta: dict = {}
    meta_path = root / METADATA
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{meta_path}: not readable JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object with 'mpp' and 'tumor_classes'")
    if mpp is None:
        mpp = meta.get("mpp")
    if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise DatasetError(f"{meta_path if 'mpp' in meta else root}: mpp must be a positive number, got {mpp!r}")
    if tumor_classes is None:
        tumor_classes = meta.get("tumor_classes")
    if tumor_classes is None:
        raise DatasetError(
            f"{root}: which point classes are tumor is not given; pass --tumor-classes (e.g. 2 for BRCA-M2C) or "
            f'write {METADATA} with "tumor_classes"'
        )
    classes = tuple(sorted({int(c) for c in tumor_classes}))
    if not classes:
        raise DatasetError(f"{root}: tumor classes must name at least one point class")
    return PointSpec(None if mpp is None else float(mpp), classes)


def find_point_files(root: str | Path) -> list[PointFile]:
    """List the images of a point set with their CSVs, sorted by name; every problem raised at once."""
    root = Path(root)
    input_dir, points_dir = root / "input", root / POINTS_DIR
    missing = [str(d) for d in (input_dir, points_dir) if not d.is_dir()]
    if missing:
        raise DatasetError(
            f"{root}: missing folder(s) {', '.join(missing)}; a point set needs input/<name>.png and points/<name>.csv"
        )
    problems: list[str] = []
    images = input_images(input_dir, problems)
    tables = {p.stem: p for p in visible_files(points_dir) if p.suffix.lower() == ".csv"}
    for name in sorted(images.keys() - tables.keys()):
        problems.append(f"{images[name]}: no points (expected {points_dir / (name + '.csv')})")
    for name in sorted(tables.keys() - images.keys()):
        problems.append(f"{tables[name]}: points without an input image (expected {input_dir / name}.png)")
    if not images and not problems:
        problems.append(f"{root}: no images in {input_dir}")
    if problems:
        raise DatasetError(problems)
    return [PointFile(name, images[name], tables[name]) for name in sorted(images)]


def read_points(path: str | Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``y,x,class`` CSV: points (N, 2) float64 (row, col) and classes (N,) int64.

    With ``shape``, points must lie inside an image of that (H, W). Every bad row is reported at once.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not rows or tuple(c.strip().lower() for c in rows[0]) != HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise DatasetError(f"{path}: the first line must be the header y,x,class, got {got!r}")
    problems: list[str] = []
    points, classes = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 3:
            problems.append(f"{path}:{number}: expected 3 fields y,x,class, got {len(row)}")
            continue
        try:
            y, x = float(row[0]), float(row[1])
            c = int(row[2])
        except ValueError:
            problems.append(f"{path}:{number}: not numbers: {','.join(row)!r}")
            continue
        if not (math.isfinite(y) and math.isfinite(x)):
            problems.append(f"{path}:{number}: coordinates must be finite, got {y},{x}")
            continue
        if shape is not None and not (0 <= y < shape[0] and 0 <= x < shape[1]):
            problems.append(f"{path}:{number}: point ({y:g}, {x:g}) lies outside the {shape[1]}x{shape[0]} image")
            continue
        points.append((y, x))
        classes.append(c)
    if problems:
        raise DatasetError(problems)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(classes, dtype=np.int64)


def load_point_samples(
    files: Sequence[PointFile],
    spec: PointSpec,
    *,
    exclude_sites: Iterable[str] = (),
    only_sites: Iterable[str] | None = None,
) -> list[PointSample]:
    """Decode every image and its points (images of ``exclude_sites`` skipped; with ``only_sites``, only images of
    those sites kept); problems raised together."""
    excluded = {s.upper() for s in exclude_sites}
    only = None if only_sites is None else {s.upper() for s in only_sites}
    samples: list[PointSample] = []
    problems: list[str] = []
    for file in files:
        site = site_of(file.name).upper()
        if site in excluded or (only is not None and site not in only):
            continue
        try:
            image = read_image(file.image)
            points, classes = read_points(file.points, image.shape[:2])
        except DatasetError as exc:
            problems.extend(exc.problems)
            continue
        samples.append(PointSample(file.name, image, points, classes, spec.mpp))
    if problems:
        raise DatasetError(problems)
    if not samples:
        kept = f"keeping only sites {sorted(only)}" if only is not None else f"excluding sites {sorted(excluded)}"
        raise DatasetError(f"no point-labelled images left after {kept}")
    return samples
