"""Evaluate a model on a point-labelled folder through the user's own path (``engine.jobs.segment_image``).

Each image is segmented at its stated resolution as ``histoseg predict`` would, cells are found with the cell rules
at that resolution, and the cells are scored against the points (``analysis.point_scores``), pooled and per
hospital.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.instances import cell_rules, cells_from_labels
from ..analysis.metrics import instance_centroids
from ..analysis.point_scores import ImagePointScore, score_image, summarize_by_group
from ..engine.infer import InferenceSettings, run
from ..engine.jobs import segment_image
from ..fileio import json_safe
from ..model.checkpoint import ModelCard
from .evaluate import EvalProgress
from .points import PointSample, PointSpec, site_of

#: Largest distance (um) between a found cell's centroid and a point for the two to pair.
DEFAULT_MATCH_UM = 3.0


@dataclass
class PointEvalResult:
    """Per-image scores, pooled scores by hospital (``"all"`` first), and the found cells' areas (um^2)."""

    rows: list[ImagePointScore]
    by_group: dict[str, dict]
    cell_areas_um2: dict[str, float]
    seconds: float
    match_um: float
    checkpoint: str | None = None
    data_dir: str | None = None
    settings: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.by_group["all"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [r.to_dict() for r in self.rows]
        return json_safe(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _area_summary(areas: np.ndarray) -> dict[str, float]:
    if not len(areas):
        return {"cells": 0}
    q = np.percentile(areas, [5, 25, 50, 75, 95])
    return {
        "cells": int(len(areas)),
        "under_5_um2": float(np.mean(areas < 5)),
        "p5": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
    }


def cells_of_image(
    sample: PointSample, model: torch.nn.Module, card: ModelCard, settings: InferenceSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Segment one image as ``histoseg predict`` does; its cells' centroids (N, 2), classes (N,), areas (N,) in
    px, and the label map's um/px (the image's, or the model's when the image has none)."""
    result = run(segment_image(sample.image, model, card, settings, mpp=sample.mpp, name=sample.name))
    mpp = sample.mpp or card.mpp or 0.25
    instances, classes = cells_from_labels(result.labels, **cell_rules(mpp))
    count = len(classes) - 1
    areas = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    return instance_centroids(instances, count), classes[1:], areas, mpp


def evaluate_points(
    model: torch.nn.Module,
    card: ModelCard,
    samples: Sequence[PointSample],
    spec: PointSpec,
    settings: InferenceSettings,
    *,
    match_um: float = DEFAULT_MATCH_UM,
    group_of: Callable[[str], str] = site_of,
) -> Generator[EvalProgress | PointEvalResult, None, PointEvalResult]:
    """Score ``model`` on point-labelled images; yields an :class:`EvalProgress` per image, then the result."""
    settings = settings.for_model(card)
    t0 = time.perf_counter()
    rows: list[ImagePointScore] = []
    areas_um2: list[np.ndarray] = []
    for i, sample in enumerate(samples, start=1):
        centroids, classes, areas, mpp = cells_of_image(sample, model, card, settings)
        rows.append(
            score_image(
                sample.name,
                group_of(sample.name),
                centroids,
                classes,
                sample.points,
                sample.is_tumor(spec),
                match_um / mpp,
            )
        )
        areas_um2.append(areas * mpp * mpp)
        elapsed = time.perf_counter() - t0
        yield EvalProgress(i, len(samples), i / elapsed if elapsed > 0 else 0.0)
    result = PointEvalResult(
        rows=rows,
        by_group=summarize_by_group(rows),
        cell_areas_um2=_area_summary(np.concatenate(areas_um2) if areas_um2 else np.zeros(0)),
        seconds=time.perf_counter() - t0,
        match_um=match_um,
        settings=settings.result_settings(),
    )
    yield result
    return result


def write_cellularity_plot(rows: Sequence[ImagePointScore], path: str | Path, title: str = "") -> Path:
    """A scatter plot PNG of reported against annotated tumor cellularity per image, coloured by hospital.

    Needs matplotlib (``pip install matplotlib``); raises ImportError with that hint when it is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the cellularity plot needs matplotlib: pip install matplotlib") from exc
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for group in sorted({r.group for r in rows}):
        mine = [r for r in rows if r.group == group]
        ax.scatter(
            [r.true_cellularity for r in mine], [r.reported_cellularity for r in mine], label=group, s=28, alpha=0.8
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("annotated tumor cellularity")
    ax.set_ylabel("reported tumor cellularity")
    ax.set_title(title or "tumor cellularity per image")
    ax.legend(title="site", loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_point_evaluation(
    data_dir: str | Path,
    checkpoint: str | Path | None,
    settings: InferenceSettings,
    *,
    mpp: float | None = None,
    tumor_classes: Sequence[int] | None = None,
    match_um: float = DEFAULT_MATCH_UM,
    sites: Sequence[str] | None = None,
    on_event: Callable[[object], None] | None = None,
) -> PointEvalResult:
    """``histoseg evaluate`` on a point-labelled folder (only the images of ``sites`` when given): read it, load
    the model, score it (synchronously)."""
    from ..engine.jobs import load_model
    from .points import find_point_files, load_point_samples, read_spec

    if not match_um > 0:
        raise ValueError(f"the pairing distance must be positive (um), got {match_um}")
    spec = read_spec(data_dir, mpp=mpp, tumor_classes=tumor_classes)
    samples = load_point_samples(find_point_files(data_dir), spec, only_sites=sites)
    model, card = load_model(checkpoint)
    result = run(evaluate_points(model, card, samples, spec, settings, match_um=match_um), on_event)
    result.checkpoint = None if checkpoint is None else str(checkpoint)
    result.data_dir = str(data_dir)
    return result


def format_point_result(result: PointEvalResult) -> str:
    """The CLI's report: the table by hospital, then the found cells' sizes."""
    from ..analysis.point_scores import format_table

    a = result.cell_areas_um2
    sizes = (
        f"cell areas: median {a['median']:.1f} um^2 (5-95%: {a['p5']:.1f}-{a['p95']:.1f}), "
        f"{100 * a['under_5_um2']:.1f}% under 5 um^2, {a['cells']} cells"
        if a.get("cells")
        else "no cells found"
    )
    return f"{format_table(result.by_group)}\n{sizes}"
