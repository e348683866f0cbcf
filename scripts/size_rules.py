"""The smallest cell kept, in um^2, checked against point sets and CoNSeP: prints JSON.

Each image is segmented once as ``histoseg predict`` would; cells are then found with each candidate smallest
interior area, and scored: on a point set, detection precision / recall, tumor type F1, cellularity MAE, and how
many found cells under 5 um^2 have no point near them (a speck with no point is most likely a false cell); on
CoNSeP (instance maps), detection and tumor type F1.

    python scripts/size_rules.py --points ../shared/data/brca-m2c/val --points-mpp 0.5 --tumor-classes 2 \
        --masks ../shared/data/consep/val [--model CKPT] [--areas 1.25 2 3 4 5]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_histoseg.analysis.instances import RULES_MPP, cell_rules, cells_from_labels
from napari_histoseg.analysis.metrics import SegmentationMetrics, instance_centroids, match_centroids
from napari_histoseg.analysis.point_scores import score_image, summarize
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.points import find_point_files, load_point_samples, read_spec, site_of
from napari_histoseg.training.samples import load_pairs


def px_at_rules(area_um2: float) -> int:
    return max(1, round(area_um2 / RULES_MPP**2))


def point_study(model, card, root, mpp, tumor_classes, areas, match_um=3.0) -> dict:
    spec = read_spec(root, mpp=mpp, tumor_classes=tumor_classes)
    samples = load_point_samples(find_point_files(root), spec)
    labels = [run(segment_image(s.image, model, card, InferenceSettings(), mpp=s.mpp)).labels for s in samples]
    out = {}
    for area in areas:
        rows, specks, unpaired_specks, sizes = [], 0, 0, []
        for sample, label_map in zip(samples, labels, strict=True):
            m = sample.mpp or card.mpp
            instances, classes = cells_from_labels(label_map, **cell_rules(m, min_area=px_at_rules(area)))
            n = len(classes) - 1
            centroids = instance_centroids(instances, n)
            cell_um2 = np.bincount(instances.ravel(), minlength=n + 1)[1:] * m * m
            sizes.append(cell_um2)
            radius = match_um / m
            rows.append(
                score_image(sample.name, site_of(sample.name), centroids, classes[1:], sample.points,
                            sample.is_tumor(spec), radius)
            )  # fmt: skip
            pairs, _, _ = match_centroids(centroids, sample.points, radius)
            small = cell_um2 < 5
            specks += int(small.sum())
            paired = np.zeros(n, bool)
            paired[pairs[:, 0]] = True
            unpaired_specks += int((small & ~paired).sum())
        s = summarize(rows)
        all_sizes = np.concatenate(sizes)
        out[str(area)] = {
            **{k: s[k] for k in ("detection_precision", "detection_recall", "detection_f1", "type_f1_tumor",
                                 "cellularity_mae", "cellularity_r")},
            "cells": int(len(all_sizes)),
            "cells_under_5_um2": specks,
            "of_them_without_a_point": unpaired_specks,
            "median_cell_um2": float(np.median(all_sizes)) if len(all_sizes) else None,
        }  # fmt: skip
    return out


def mask_study(model, card, root, areas) -> dict:
    samples, _ = load_pairs(find_pairs(root))
    labels = [run(segment_image(s.image, model, card, InferenceSettings())).labels for s in samples]
    out = {}
    for area in areas:
        metrics = SegmentationMetrics(min_area=px_at_rules(area))
        for sample, label_map in zip(samples, labels, strict=True):
            metrics.update(label_map, sample.labels, sample.inst)
        m = metrics.compute()
        out[str(area)] = {k: m[k] for k in ("detection_f1", "detection_precision", "detection_recall", "type_f1_tumor")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--points")
    p.add_argument("--points-mpp", type=float)
    p.add_argument("--tumor-classes", type=int, nargs="+")
    p.add_argument("--masks")
    p.add_argument("--areas", type=float, nargs="+", default=[1.25, 2.0, 3.0, 4.0, 5.0])
    args = p.parse_args()
    model, card = load_model(args.model)
    result = {"model": args.model or "bundled", "smallest_interior_um2": args.areas}
    if args.points:
        result["points"] = point_study(model, card, args.points, args.points_mpp, args.tumor_classes, args.areas)
    if args.masks:
        result["masks"] = mask_study(model, card, args.masks, args.areas)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
