"""Save an image and its class labels as a training pair: ``DIR/input/<name>.png`` + ``DIR/gt/<name>_gt.png``.

This is how a corrected prediction becomes training data: the gt file is colour-coded with ``CLASS_COLORS`` so it
reads back with :func:`napari_histoseg.training.image_files.read_mask` exactly. A corrected prediction also saves
``DIR/reviewed/<name>.png`` (the pixels the user changed or confirmed, white; only they teach, see
``training.corrections``) and ``DIR/meta/<name>.json`` (the image's own microns per pixel).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from .classes import NUM_CLASSES, labels_to_rgb

GT_SUFFIX = "_gt.png"
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class PairExportError(ValueError):
    """An image/labels pair that cannot be saved (the message names the pair and the problem)."""


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (other characters become ``_``)."""
    cleaned = _NAME_RE.sub("_", name).strip("._")
    return cleaned or "pair"


def labelled_box(labels: np.ndarray, margin: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` of the non-background labels grown by ``margin``; None when all background."""
    labels = np.asarray(labels)
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:
        return None
    h, w = labels.shape
    return (
        max(0, int(rows[0]) - margin),
        max(0, int(cols[0]) - margin),
        min(h, int(rows[-1]) + 1 + margin),
        min(w, int(cols[-1]) + 1 + margin),
    )


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise PairExportError(f"{name}: the image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and np.nanmax(image, initial=0) <= 1.0:
            image = image * 255.0
        image = np.clip(np.rint(np.nan_to_num(image)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise PairExportError(f"{name}: labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        found = sorted(int(v) for v in np.unique(labels) if not 0 <= v < NUM_CLASSES)
        raise PairExportError(
            f"{name}: labels hold values {found[:5]} outside the classes 0..{NUM_CLASSES - 1} "
            "(paint with labels 1 tumor, 2 non-tumor, 3 boundary)"
        )
    return labels.astype(np.uint8)


def reviewed_from_edits(labels: np.ndarray, edited: np.ndarray, grow: int = 2) -> np.ndarray:
    """The pixels a user reviewed, from the pixels they edited: every cell an edit touched, whole (a cell is a
    connected region of classes 1-3 in the corrected ``labels``), plus the edited pixels themselves (an erased
    cell is reviewed background), grown by ``grow`` px so that where each cell ends is taught too."""
    from scipy import ndimage as ndi

    labels, edited = np.asarray(labels), np.asarray(edited, dtype=bool)
    if labels.shape != edited.shape:
        raise ValueError(f"labels {labels.shape} and edited pixels {edited.shape} differ in size")
    cells, _ = ndi.label(labels > 0)
    touched = np.unique(cells[edited & (cells > 0)])
    reviewed = edited | np.isin(cells, touched[touched > 0])
    if grow > 0 and reviewed.any():
        reviewed = ndi.binary_dilation(reviewed, iterations=int(grow))
    return reviewed


def pair_paths(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Where the pair ``name`` goes under ``folder``: (input png, gt png)."""
    folder = Path(folder)
    return folder / "input" / f"{name}.png", folder / "gt" / f"{name}{GT_SUFFIX}"


def unique_name(folder: str | os.PathLike, name: str) -> str:
    """``name`` made file-safe, with ``_2``, ``_3``... appended when a pair of that name exists in ``folder``."""
    base = safe_name(name)
    candidate, k = base, 1
    while (
        any(p.exists() for p in pair_paths(folder, candidate))
        or (Path(folder) / "reviewed" / f"{candidate}.png").exists()
    ):
        k += 1
        candidate = f"{base}_{k}"
    return candidate


def save_pair(
    image: np.ndarray,
    labels: np.ndarray,
    folder: str | os.PathLike,
    name: str,
    *,
    overwrite: bool = False,
    require_labels: bool = True,
    reviewed: np.ndarray | None = None,
    mpp: float | None = None,
) -> tuple[Path, Path]:
    """Write ``image`` (H, W, 3) and ``labels`` (H, W, classes 0..3) as a folder pair; return both paths.

    ``reviewed`` (H, W) bool marks what the user corrected or confirmed (e.g. :func:`reviewed_from_edits`): it is
    saved as ``reviewed/<name>.png`` and training then learns from those pixels only. ``mpp`` (the image's
    microns per pixel) is saved in ``meta/<name>.json``; training resamples the pair to the model's resolution.
    Raises :class:`PairExportError` for mismatched shapes, values outside the classes, an all-background
    label array (when ``require_labels``), an empty ``reviewed`` mask, or an existing pair of that name (unless
    ``overwrite``).
    """
    from PIL import Image

    rgb = _as_rgb(image, name)
    classes = _as_labels(labels, name)
    if rgb.shape[:2] != classes.shape:
        raise PairExportError(f"{name}: image {rgb.shape[:2]} and labels {classes.shape} differ in size")
    if require_labels and not classes.any():
        raise PairExportError(f"{name}: the labels are all background; paint classes 1-3 before adding a pair")
    if reviewed is not None:
        reviewed = np.asarray(reviewed, dtype=bool)
        if reviewed.shape != classes.shape:
            raise PairExportError(f"{name}: reviewed pixels {reviewed.shape} and labels {classes.shape} differ in size")
        if not reviewed.any():
            raise PairExportError(f"{name}: nothing was corrected or marked reviewed in this area")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise PairExportError(f"{name}: the image's resolution must be a positive um/px, got {mpp!r}")
    input_path, gt_path = pair_paths(folder, safe_name(name))
    if not overwrite:
        existing = [str(p) for p in (input_path, gt_path) if p.exists()]
        if existing:
            raise PairExportError(f"{name}: {', '.join(existing)} already exist(s); choose another name")
    input_path.parent.mkdir(parents=True, exist_ok=True)
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(input_path)
    Image.fromarray(labels_to_rgb(classes)).save(gt_path)
    stem = safe_name(name)
    for sub, suffix, keep in (("reviewed", ".png", reviewed is not None), ("meta", ".json", mpp is not None)):
        path = Path(folder) / sub / f"{stem}{suffix}"
        if keep:
            path.parent.mkdir(parents=True, exist_ok=True)
            if sub == "reviewed":
                Image.fromarray(reviewed.astype(np.uint8) * 255).save(path)
            else:
                path.write_text(json.dumps({"mpp": float(mpp)}) + "\n")
        elif overwrite and path.exists():
            path.unlink()  # a replaced pair must not keep the old pair's mask or resolution
    return input_path, gt_path
