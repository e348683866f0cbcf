"""The validation score that picks the "best" checkpoint of a run (see ``training.train``'s module doc)."""

from __future__ import annotations

import math

import numpy as np


def _mean_finite(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def selection_score(metrics: dict, select_metric: str = "score") -> float:
    """The number "best" maximises (``val_loss`` is negated); NaN when undefined.

    ``score`` is the mean of the detection F1, the tumor type F1 and the mean pixel F1. With a point-labelled
    validation folder it is the mean of that and the point score (the mean of the points' tumor type F1 and
    1 - the per-image cellularity error); with corrected pairs, the mean of that and their ``review_score``.
    """
    if select_metric == "score":
        score = _mean_finite(metrics.get(k, float("nan")) for k in ("detection_f1", "type_f1_tumor", "mean_f1"))
        if "points_type_f1_tumor" in metrics:
            mae = metrics.get("points_cellularity_mae")
            points = _mean_finite([metrics["points_type_f1_tumor"], None if mae is None else 1 - mae])
            score = _mean_finite([score, points])
        if "review_score" in metrics:  # corrected pairs: agreement with the corrections, little change elsewhere
            score = _mean_finite([score, metrics["review_score"]])
        return score
    value = metrics.get(select_metric)
    if value is None or not math.isfinite(value):
        return float("nan")
    return -float(value) if select_metric == "val_loss" else float(value)
