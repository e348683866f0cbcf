"""Validation of a fine-tune on corrected pairs: agreement with the user's corrections, change elsewhere, and
why an epoch must not become best (see ``corrections``'s module doc and docs/fine-tuning.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..analysis.opening import open_labels
from ..classes import BOUNDARY, CLASS_NAMES, NON_TUMOR, NUM_CLASSES, TUMOR
from ..fileio import atomic_write, json_safe
from .corrections import PIXEL_KIND, ReviewedImage

#: A class whose predicted share of the corrected images falls below this fraction of the starting model's has
#: disappeared (only classes the starting model gave at least MIN_CLASS_SHARE of the pixels).
COLLAPSE_FRACTION = 0.25
MIN_CLASS_SHARE = 0.002
#: A cell type is checked when the user's reviewed cells give it at least this share of their cell pixels.
MIN_TYPE_SHARE = 0.05


def predict_classes(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    logit_bias: Sequence[float],
    *,
    batch_size: int = 8,
    amp: bool = True,
    opening_radius: int = 2,
) -> np.ndarray:
    """Class labels (H, W) uint8 of an image already on the model's grid and stain, as validation decides them
    (256 px windows blended as the engine does, the card's logit bias, the opening)."""
    from .evaluate import _windowed_probabilities

    model.eval()
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255).to(device)
    with torch.inference_mode():
        probs = _windowed_probabilities(model, pixels, batch_size, logit_bias, amp)
    return open_labels(probs.argmax(dim=0).to(torch.uint8).cpu().numpy(), opening_radius)


def _region_agreement(image: ReviewedImage, pred: np.ndarray, ids: np.ndarray) -> tuple[int, int]:
    """(agreeing, total) reviewed regions among ``ids``: a region the user left with cell pixels agrees when the
    prediction keeps at least a quarter of them as cells and their majority type is the user's; a region the
    user left without cells (an erased false cell) agrees when under a quarter of it is predicted cell."""
    if not len(ids):
        return 0, 0
    n = int(image.regions.max())
    r = image.regions.ravel()

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(r, weights=mask.ravel(), minlength=n + 1)

    area = np.bincount(r, minlength=n + 1).astype(np.float64)
    true_t, true_n = count(image.labels == TUMOR), count(image.labels == NON_TUMOR)
    pred_t, pred_n = count(pred == TUMOR), count(pred == NON_TUMOR)
    true_cell, pred_cell = true_t + true_n, pred_t + pred_n
    agree = 0
    for k in ids:
        if true_cell[k] > 0:
            same_type = (pred_t[k] >= pred_n[k]) == (true_t[k] >= true_n[k])
            agree += int(pred_cell[k] >= 0.25 * true_cell[k] and pred_cell[k] > 0 and same_type)
        else:
            agree += int(pred_cell[k] < 0.25 * area[k])
    return agree, len(ids)


def review_metrics(
    model: torch.nn.Module,
    review: Sequence[ReviewedImage],
    device: torch.device,
    logit_bias: Sequence[float],
    *,
    reference: Sequence[np.ndarray] | None = None,
    batch_size: int = 8,
    amp: bool = True,
    opening_radius: int = 2,
) -> tuple[dict, list[np.ndarray]]:
    """Agreement with the user's corrections and change elsewhere (module doc); returns the metrics and the
    predictions (pass the starting model's as ``reference`` to measure the change on untouched pixels)."""
    preds: list[np.ndarray] = []
    agree = total = held_agree = held_total = 0
    right = reviewed_px = changed = untouched = retyped = cells_kept = 0
    class_px = np.zeros(NUM_CLASSES, dtype=np.int64)
    user_px = np.zeros(NUM_CLASSES, dtype=np.int64)  # the classes of the user's reviewed pixels
    for i, item in enumerate(review):
        pred = predict_classes(
            model, item.image, device, logit_bias, batch_size=batch_size, amp=amp, opening_radius=opening_radius
        )
        preds.append(pred)
        ids = np.arange(1, int(item.regions.max()) + 1)
        trained = ids[~np.isin(ids, item.held_ids)]
        a, t = _region_agreement(item, pred, trained)
        agree, total = agree + a, total + t
        a, t = _region_agreement(item, pred, item.held_ids)
        held_agree, held_total = held_agree + a, held_total + t
        right += int((pred[item.reviewed] == item.labels[item.reviewed]).sum())
        reviewed_px += int(item.reviewed.sum())
        if reference is not None:
            outside = ~item.reviewed
            # What a cell is and where it ends is held; its type may follow the corrections (module doc).
            now, then = PIXEL_KIND[pred[outside]], PIXEL_KIND[reference[i][outside]]
            changed += int((now != then).sum())
            untouched += int(outside.sum())
            both = (now == 1) & (then == 1)
            retyped += int((pred[outside][both] != reference[i][outside][both]).sum())
            cells_kept += int(both.sum())
        class_px += np.bincount(pred.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        user_px += np.bincount(item.labels[item.reviewed].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    nan = float("nan")
    cells = agree + held_agree
    metrics = {
        "review_images": len(review),
        "review_cells": total,
        "review_agreement": agree / total if total else nan,
        "review_held_cells": held_total,
        "review_held_agreement": held_agree / held_total if held_total else nan,
        "review_pixel_accuracy": right / reviewed_px if reviewed_px else nan,
        "untouched_changed": changed / untouched if untouched else 0.0,
        "untouched_retyped": retyped / cells_kept if cells_kept else 0.0,
        "review_all_agreement": cells / (total + held_total) if total + held_total else nan,
        "class_share": (class_px / max(int(class_px.sum()), 1)).tolist(),
        "type_share": _type_share(class_px),
        "user_type_share": _type_share(user_px),
    }
    # All reviewed cells (trained and held aside) judge agreement: the held-aside few dozen alone are too noisy
    # to rank epochs by, and guard against over-fitting instead (collapse_problems).
    metrics["review_score"] = float(np.nanmean([metrics["review_all_agreement"], 1 - metrics["untouched_changed"]]))
    return metrics, preds


def _type_share(class_px: np.ndarray) -> list[float]:
    """The share of tumor and of non-tumor among cell pixels."""
    cells = int(class_px[TUMOR] + class_px[NON_TUMOR])
    return [float(class_px[TUMOR] / cells), float(class_px[NON_TUMOR] / cells)] if cells else [0.0, 0.0]


def collapse_problems(metrics: dict, baseline: dict) -> list[str]:
    """Why an epoch must not become best: the boundary ring or a cell type has (nearly) disappeared, or the
    held-aside agreement fell below the starting model's.

    The boundary is judged against the starting model's share of the pixels. A cell type is judged against the
    user's own reviewed cells, not the starting model: correcting a systematic mistake (carcinoma cells the model
    called non-tumor) should make "non-tumor" rarer, but not rarer than the user's corrections make it.
    """
    problems = []
    before, after = baseline.get("class_share"), metrics.get("class_share")
    if (
        before
        and after
        and before[BOUNDARY] >= MIN_CLASS_SHARE
        and after[BOUNDARY] < COLLAPSE_FRACTION * before[BOUNDARY]
    ):
        problems.append(
            f"class {CLASS_NAMES[BOUNDARY]} nearly disappeared from the corrected images "
            f"({100 * after[BOUNDARY]:.2f}% of pixels, {100 * before[BOUNDARY]:.2f}% before fine-tuning)"
        )
    user, now = metrics.get("user_type_share"), metrics.get("type_share")
    if user and now:
        for k, c in enumerate((TUMOR, NON_TUMOR)):
            if user[k] >= MIN_TYPE_SHARE and now[k] < COLLAPSE_FRACTION * user[k]:
                problems.append(
                    f"class {CLASS_NAMES[c]} nearly disappeared from the corrected images ({100 * now[k]:.1f}% of "
                    f"cell pixels, {100 * user[k]:.1f}% of the reviewed cells' pixels)"
                )
    held0, held1 = baseline.get("review_held_agreement"), metrics.get("review_held_agreement")
    n = int(metrics.get("review_held_cells") or 0)
    # A fall of a few cells among a few dozen held-aside cells is noise: refused beyond two standard errors.
    se = math.sqrt(held0 * (1 - held0) / n) if n and held0 is not None and math.isfinite(held0) else 0.0
    tolerance = 2 * se
    ok = held0 is not None and held1 is not None and math.isfinite(held0) and math.isfinite(held1)
    if ok and held1 < held0 - max(tolerance, 1e-9):
        problems.append(f"agreement on the held-aside corrected cells fell from {held0:.3f} to {held1:.3f}")
    return problems


def write_review_log(run_dir: str | Path, before: dict, epochs: list[dict]) -> Path:
    """``RUN_DIR/review.json``: the starting model's review metrics and every epoch's."""
    path = Path(run_dir) / "review.json"
    atomic_write(path, (json.dumps(json_safe({"before": before, "epochs": epochs}), indent=2) + "\n").encode())
    return path


def format_review(metrics: dict, before: dict | None = None) -> str:
    """One line on the corrections for a status display ("" without review metrics)."""
    if "review_agreement" not in metrics:
        return ""

    def pct(value) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"

    text = (
        f"corrected cells agreeing: {pct(metrics['review_agreement'])} trained, "
        f"{pct(metrics['review_held_agreement'])} held aside; untouched pixels changed: "
        f"{100 * metrics['untouched_changed']:.1f}%"
    )
    before = before or metrics.get("review_before")
    if before:
        text += f" (before: {pct(before.get('review_agreement'))}, {pct(before.get('review_held_agreement'))})"
    return text
