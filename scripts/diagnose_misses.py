"""Where a model's detection and typing errors are, on folder pairs with instance maps (e.g. CoNSeP val).

Segments each image with the call ``histoseg predict`` makes (``engine.jobs.segment_image``, default settings,
stain statistics pooled over the folder as ``histoseg evaluate`` pools them), finds cells with the default cell
rules and matches them as ``histoseg evaluate`` does (``analysis.metrics.MATCH_RADIUS``), then prints:
- the true cells left unmatched: covered by predicted cells (merged with a neighbour or off-centre) or mostly
  predicted as background (< 20% covered), their median area and the share cut by the image edge;
- recall by true class and for cells on / off the image edge;
- the type confusion of the matched cells, and the tumor type F1 if every matched cell were typed right (what
  better detection alone could reach).

With ``--json`` the figures are also printed as one JSON object, the last line.

Usage: python scripts/diagnose_misses.py CHECKPOINT|bundled DATA_DIR [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_histoseg.analysis.instances import cells_from_labels
from napari_histoseg.analysis.metrics import (
    MATCH_RADIUS,
    instance_centroids,
    instance_classes,
    match_centroids,
    renumber_instances,
    type_counts,
    type_f1_from_counts,
)
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.fileio import json_safe
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import load_pairs, pooled_stain_stats


def predictions(checkpoint: str | None, data_dir: str, device: str = "auto"):
    """(predicted labels, gt labels, gt instances) per pair of ``data_dir``, segmented as in use."""
    model, card = load_model(checkpoint)
    samples, _ = load_pairs(find_pairs(data_dir))
    settings = InferenceSettings(device=device)
    stain = pooled_stain_stats(samples) if settings.stain_normalize else None
    for sample in samples:
        if sample.inst is None:
            raise SystemExit(f"{data_dir}: {sample.name} has no instance map (inst/); it tells cells apart")
        job = segment_image(sample.image, model, card, settings, mpp=sample.mpp, name=sample.name, stain_source=stain)
        yield run(job).labels, sample.labels, sample.inst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or 'bundled' for the bundled model")
    p.add_argument("data_dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the figures as JSON, last line")
    args = p.parse_args()
    checkpoint = None if args.checkpoint == "bundled" else args.checkpoint

    # One row per true cell: matched, area, on the image edge, covered fraction, class.
    rows = []
    confusion = np.zeros((3, 3), np.int64)  # true class (0 none, 1 tumor, 2 non-tumor) x predicted
    actual, perfect = np.zeros(6, np.int64), np.zeros(6, np.int64)
    for pred, gt, inst in predictions(checkpoint, args.data_dir, args.device):
        pred_inst, pred_cls = cells_from_labels(pred)
        true_inst = renumber_instances(inst)
        true_cls = instance_classes(true_inst, gt)
        true_c = instance_centroids(true_inst)
        pairs, un_pred, un_true = match_centroids(
            instance_centroids(pred_inst, len(pred_cls) - 1), true_c, MATCH_RADIUS
        )
        pt, tt = pred_cls[1:], true_cls[1:]
        np.add.at(confusion, (tt[pairs[:, 1]], pt[pairs[:, 0]]), 1)
        actual += type_counts(pt[pairs[:, 0]], tt[pairs[:, 1]], pt[un_pred], tt[un_true], TUMOR)
        perfect += type_counts(tt[pairs[:, 1]], tt[pairs[:, 1]], pt[un_pred], tt[un_true], TUMOR)
        area = np.bincount(true_inst.ravel(), minlength=len(true_c) + 1)
        covered = np.bincount(true_inst.ravel(), weights=(pred_inst > 0).ravel(), minlength=len(true_c) + 1)
        edge = np.zeros(area.size, bool)
        for side in (true_inst[0], true_inst[-1], true_inst[:, 0], true_inst[:, -1]):
            edge[side] = True
        matched = np.zeros(len(true_c), bool)
        matched[pairs[:, 1]] = True
        for j in range(len(true_c)):
            rows.append((matched[j], area[j + 1], edge[j + 1], covered[j + 1] / area[j + 1], tt[j]))

    matched, area, edge, covered, cls = (np.array(c) for c in zip(*rows, strict=True))
    missed = ~matched
    background = missed & (covered < 0.2)
    print(f"true cells {len(rows)}, matched {int(matched.sum())}, unmatched {int(missed.sum())}")
    print(
        f"  unmatched, covered by predicted cells (merged or off-centre): {int((missed & ~background).sum())}; "
        f"mostly predicted background: {int(background.sum())} (median area {np.median(area[background]):.0f} px, "
        f"{edge[background].mean():.0%} on the image edge; matched cells: median {np.median(area[matched]):.0f} px)"
    )
    print(
        f"recall: tumor {matched[cls == TUMOR].mean():.3f}, non-tumor {matched[cls == NON_TUMOR].mean():.3f}; "
        f"on the image edge {matched[edge].mean():.3f}, inside {matched[~edge].mean():.3f}"
    )
    print(f"matched cells, true class (none, tumor, non-tumor) x predicted:\n{confusion}")
    print(
        f"tumor type F1 {type_f1_from_counts(actual):.4f}; with every matched cell typed right "
        f"{type_f1_from_counts(perfect):.4f}"
    )
    if args.json:
        figures = {
            "true_cells": len(rows),
            "matched": int(matched.sum()),
            "unmatched_covered": int((missed & ~background).sum()),
            "unmatched_background": int(background.sum()),
            "median_area_background_px": float(np.median(area[background])) if background.any() else None,
            "edge_share_background": float(edge[background].mean()) if background.any() else None,
            "median_area_matched_px": float(np.median(area[matched])) if matched.any() else None,
            "recall": {
                "tumor": float(matched[cls == TUMOR].mean()),
                "non_tumor": float(matched[cls == NON_TUMOR].mean()),
                "edge": float(matched[edge].mean()),
                "inside": float(matched[~edge].mean()),
            },
            "type_confusion": confusion.tolist(),
            "tumor_type_f1": type_f1_from_counts(actual),
            "tumor_type_f1_if_typed_right": type_f1_from_counts(perfect),
        }
        print(json.dumps(json_safe(figures)))


if __name__ == "__main__":
    main()
