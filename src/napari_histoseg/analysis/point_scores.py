"""Scores of found cells against annotated points: detection, cell type, and tumor cellularity per image.

Cells are paired one-to-one with points within a radius (optimal assignment, ``metrics.match_centroids``).
Point sets annotate some nuclei, not all, so a found cell with no point near it may be a real, unannotated nucleus:
detection precision is a lower bound, and the type F1 (HoVer-Net's formula, ``metrics.type_f1_from_counts``)
leaves out the unpaired found cells (FP_d = 0) and counts the unpaired points (FN_d). A second type F1 follows the
equation as the HoVer-Net paper writes it: it also credits the pairs typed right as the other type (TN) and counts
the unpaired found cells of the type (FP_d) ("paper"; the issue that asked for point scores quoted its figures with
it: see docs/point-training.md). Tumor cellularity is
compared per image: the annotators' (tumor points / points) against what the tool reports (tumor cells / cells
found) and against the type of the paired cells only ("at annotated cells").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..classes import NON_TUMOR, TUMOR
from .metrics import match_centroids, type_counts, type_f1_from_counts


@dataclass
class ImagePointScore:
    """What one image's cells scored against its points (counts; ratios are computed when pooled)."""

    name: str
    group: str
    points: int
    tumor_points: int
    cells: int
    tumor_cells: int
    matched: int
    matched_tumor_cells: int
    tumor_counts: list[int] = field(default_factory=list)  # [TP, TN, FP, FN, FP_d, FN_d]
    non_tumor_counts: list[int] = field(default_factory=list)
    tumor_counts_paper: list[int] = field(default_factory=list)  # the same, TN counted and FP_d judged
    non_tumor_counts_paper: list[int] = field(default_factory=list)

    @property
    def true_cellularity(self) -> float:
        return self.tumor_points / self.points if self.points else float("nan")

    @property
    def reported_cellularity(self) -> float:
        return self.tumor_cells / self.cells if self.cells else float("nan")

    @property
    def matched_cellularity(self) -> float:
        return self.matched_tumor_cells / self.matched if self.matched else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            true_cellularity=self.true_cellularity,
            reported_cellularity=self.reported_cellularity,
            matched_cellularity=self.matched_cellularity,
        )
        return d


def score_image(
    name: str,
    group: str,
    centroids: np.ndarray,
    cell_classes: np.ndarray,
    points: np.ndarray,
    point_is_tumor: np.ndarray,
    radius: float,
) -> ImagePointScore:
    """Pair cells (centroids (N, 2) and classes (N,) of 1 = tumor, 2 = non-tumor) with points (M, 2) whose types
    are ``point_is_tumor`` (M,), within ``radius`` px, and count what :class:`ImagePointScore` holds."""
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    cell_classes = np.asarray(cell_classes).reshape(-1)
    point_types = np.where(np.asarray(point_is_tumor, dtype=bool).reshape(-1), TUMOR, NON_TUMOR)
    pairs, unpaired_pred, unpaired_gt = match_centroids(centroids, points, radius)
    paired_pred, paired_gt = cell_classes[pairs[:, 0]], point_types[pairs[:, 1]]
    no_fp_d = np.zeros(0, dtype=point_types.dtype)  # unpaired found cells are not judged (module doc)
    counts = {
        t: type_counts(paired_pred, paired_gt, no_fp_d, point_types[unpaired_gt], t).tolist()
        for t in (TUMOR, NON_TUMOR)
    }
    paper = {
        t: type_counts(
            paired_pred, paired_gt, cell_classes[unpaired_pred], point_types[unpaired_gt], t, count_tn=True
        ).tolist()
        for t in (TUMOR, NON_TUMOR)
    }
    return ImagePointScore(
        name=name,
        group=group,
        points=len(point_types),
        tumor_points=int((point_types == TUMOR).sum()),
        cells=len(cell_classes),
        tumor_cells=int((cell_classes == TUMOR).sum()),
        matched=len(pairs),
        matched_tumor_cells=int((paired_pred == TUMOR).sum()),
        tumor_counts=counts[TUMOR],
        non_tumor_counts=counts[NON_TUMOR],
        tumor_counts_paper=paper[TUMOR],
        non_tumor_counts_paper=paper[NON_TUMOR],
    )


def pearson_r(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of two sequences (NaN pairs dropped); NaN with fewer than 3 pairs or no spread."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def summarize(rows: Iterable[ImagePointScore]) -> dict:
    """Pooled scores of images: detection precision / recall / F1, tumor and non-tumor type F1 (both formulas of
    the module doc), and per-image cellularity MAE and Pearson r (reported and at annotated cells)."""
    rows = list(rows)
    points = sum(r.points for r in rows)
    cells = sum(r.cells for r in rows)
    matched = sum(r.matched for r in rows)
    precision = matched / cells if cells else float("nan")
    recall = matched / points if points else float("nan")
    f1 = 2 * matched / (cells + points) if cells + points else float("nan")

    def pooled(key: str) -> np.ndarray:
        return np.sum([getattr(r, key) for r in rows], axis=0) if rows else np.zeros(6)

    truth = [r.true_cellularity for r in rows]
    reported = [r.reported_cellularity for r in rows]
    at_points = [r.matched_cellularity for r in rows]

    def mae(pred: list[float]) -> float:
        errors = [abs(p - t) for p, t in zip(pred, truth, strict=True) if math.isfinite(p) and math.isfinite(t)]
        return float(np.mean(errors)) if errors else float("nan")

    return {
        "images": len(rows),
        "points": points,
        "cells": cells,
        "matched": matched,
        "detection_precision": precision,
        "detection_recall": recall,
        "detection_f1": f1,
        "type_f1_tumor": type_f1_from_counts(pooled("tumor_counts")),
        "type_f1_non_tumor": type_f1_from_counts(pooled("non_tumor_counts")),
        "type_f1_tumor_paper": type_f1_from_counts(pooled("tumor_counts_paper")),
        "type_f1_non_tumor_paper": type_f1_from_counts(pooled("non_tumor_counts_paper")),
        "cellularity_mae": mae(reported),
        "cellularity_r": pearson_r(reported, truth),
        "cellularity_mae_at_points": mae(at_points),
        "cellularity_r_at_points": pearson_r(at_points, truth),
    }


def summarize_by_group(rows: Iterable[ImagePointScore]) -> dict[str, dict]:
    """:func:`summarize` of all images (key ``"all"``) and of each group (hospital), groups sorted."""
    rows = list(rows)
    out = {"all": summarize(rows)}
    for group in sorted({r.group for r in rows}):
        out[group] = summarize([r for r in rows if r.group == group])
    return out


def format_table(by_group: dict[str, dict]) -> str:
    """A fixed-width table of :func:`summarize_by_group`, one line per group."""
    columns = (
        ("images", "images", "{:d}"),
        ("points", "points", "{:d}"),
        ("det P", "detection_precision", "{:.3f}"),
        ("det R", "detection_recall", "{:.3f}"),
        ("det F1", "detection_f1", "{:.3f}"),
        ("tumor F1", "type_f1_tumor", "{:.3f}"),
        ("non-tumor F1", "type_f1_non_tumor", "{:.3f}"),
        ("tumor paper", "type_f1_tumor_paper", "{:.3f}"),
        ("cell. MAE", "cellularity_mae", "{:.3f}"),
        ("cell. r", "cellularity_r", "{:.3f}"),
        ("MAE@pts", "cellularity_mae_at_points", "{:.3f}"),
        ("r@pts", "cellularity_r_at_points", "{:.3f}"),
    )
    header = f"{'site':<6}" + "".join(f"{title:>13}" for title, _, _ in columns)
    lines = [header]
    for group, scores in by_group.items():
        cells = []
        for _, key, fmt in columns:
            value = scores[key]
            cells.append("nan" if isinstance(value, float) and not math.isfinite(value) else fmt.format(value))
        lines.append(f"{group:<6}" + "".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)
