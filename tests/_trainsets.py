"""Tiny synthetic training sets in the folder-pair layout (tests of training and evaluation)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from napari_histoseg.classes import CLASS_COLORS

# Background pink, tumor nuclei dark purple, non-tumor nuclei blue-ish, boundaries darkest.
_COLOURS = np.array([[235, 190, 215], [110, 40, 120], [60, 70, 190], [40, 20, 70]], dtype=np.float64)


def blob_image(size: int = 64, seed: int = 0, n: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An H&E-like RGB image with round nuclei, its class labels and its instance map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.uint16)
    i = 0
    for _ in range(20 * n):  # place up to n separate nuclei (2 px apart at least)
        if i == n:
            break
        r = int(rng.integers(5, 8))
        cy, cx = rng.integers(r + 1, size - r - 1, size=2)
        if inst[disk((cy, cx), r + 2, shape=labels.shape)].any():
            continue
        i += 1
        rr, cc = disk((cy, cx), r, shape=labels.shape)
        inst[rr, cc] = i
        labels[rr, cc] = 1 if i % 2 else 2
    edge = find_boundaries(inst, mode="inner") & (inst > 0)
    labels[edge] = 3
    image = _COLOURS[labels] + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels, inst


def write_set(root: Path, n: int = 2, size: int = 64, seed: int = 0, prefix: str = "img") -> Path:
    """Write ``n`` synthetic pairs (with instance maps) under ``root`` and return ``root``."""
    for sub in ("input", "gt", "inst"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image, labels, inst = blob_image(size, seed + k)
        name = f"{prefix}_{k:03d}"
        iio.imwrite(root / "input" / f"{name}.png", image)
        iio.imwrite(root / "gt" / f"{name}_gt.png", CLASS_COLORS[labels])
        iio.imwrite(root / "inst" / f"{name}.png", inst)
    return root


def write_point_set(
    root: Path, n: int = 2, size: int = 64, seed: int = 0, prefix: str = "TCGA-A1-X", metadata: dict | None = None
) -> Path:
    """Write ``n`` synthetic point-labelled images (a point at the centre of each nucleus, class 2 for tumor
    nuclei and 1 for the others, as BRCA-M2C) under ``root``; with ``metadata``, ``root/points.json`` too."""
    import json

    from napari_histoseg.analysis.metrics import instance_centroids

    for sub in ("input", "points"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image, labels, inst = blob_image(size, seed + k)
        name = f"{prefix}-{k:03d}"
        iio.imwrite(root / "input" / f"{name}.png", image)
        centres = instance_centroids(inst)
        rows = ["y,x,class"]
        for i, (y, x) in enumerate(centres, start=1):
            tumor = labels[inst == i].tolist().count(1) > 0
            rows.append(f"{y:.1f},{x:.1f},{2 if tumor else 1}")
        (root / "points" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    if metadata is not None:
        (root / "points.json").write_text(json.dumps(metadata))
    return root
