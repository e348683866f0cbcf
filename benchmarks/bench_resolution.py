"""Accuracy at another resolution than the model's: CoNSeP val segmented as a 20x slide.

The bundled model was trained at 0.25 um/px (40x). A 20x slide (0.5 um/px) is upsampled 2x for it and its labels
come back at 0.5 um/px, where the cells are found. This benchmark makes such a slide out of each CoNSeP
validation patch (area-downsampled 2x), segments it with the inference engine as any slide is (``segment_image``
with ``mpp=0.5``), finds the cells on the 0.5 um/px labels and scores them against the patch's true nuclei
(their centroids at 0.25 um/px, match radius 12 px there). In the same invocation it runs:

- ``native``: the patches themselves at 0.25 um/px (the reference: what ``histoseg evaluate`` measures);
- ``20x, rules converted``: the opening radius and the cell rules converted to the map's 0.5 um/px (the product);
- ``20x, rules as pixels``: the opening radius and the rules' sizes taken as pixels of the 0.5 um/px map (how the
  product applied them before they followed the map's resolution: opening radius 2 px, smallest cell 20 px, ...).

Prints detection F1 (precision / recall), tumor and non-tumor type F1 and the cell counts of each, and the ratio
of each 20x run's detection F1 to the native one.

    python benchmarks/bench_resolution.py [--val ../shared/data/consep/val] [--model CHECKPOINT] [--fp32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_histoseg.analysis.instances import cell_rules, cells_from_labels
from napari_histoseg.analysis.metrics import (
    SegmentationMetrics,
    instance_centroids,
    instance_classes,
    renumber_instances,
)
from napari_histoseg.analysis.opening import radius_at
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import load_pairs, pooled_stain_stats

FACTOR = 2  # 40x -> 20x


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area average over ``factor`` x ``factor`` pixels (the image cropped to a multiple of ``factor``)."""
    h, w = (s - s % factor for s in image.shape[:2])
    blocks = image[:h, :w, :3].reshape(h // factor, factor, w // factor, factor, 3).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--val", type=Path, default=root.parent / "shared" / "data" / "consep" / "val")
    parser.add_argument("--model", help="checkpoint (default: the bundled model)")
    parser.add_argument("--fp32", action="store_true", help="float32 throughout (default: bf16 where faster)")
    args = parser.parse_args()

    model, card = load_model(args.model)
    samples, _ = load_pairs(find_pairs(args.val))
    stain = pooled_stain_stats(samples)  # the folder's colours, as histoseg evaluate uses
    native_mpp, coarse_mpp = card.mpp, card.mpp * FACTOR
    opening = InferenceSettings().opening_radius
    common = {"device": "cpu", "amp": not args.fp32, "skip_background": False, "cell_typer": False}  # patches
    settings = InferenceSettings(**common)
    runs = {
        "native": (settings, native_mpp, cell_rules(native_mpp)),
        "20x, rules converted": (settings, coarse_mpp, cell_rules(coarse_mpp)),
        # The old behaviour: the opening's radius and the rules' sizes as pixels of the coarse map.
        "20x, rules as pixels": (
            InferenceSettings(**common, opening_radius=opening * FACTOR),
            coarse_mpp,
            cell_rules(None),
        ),
    }
    assert radius_at(opening * FACTOR, FACTOR) == opening
    scores, seconds = {}, {}
    for name, (run_settings, mpp, rules) in runs.items():
        metrics = SegmentationMetrics()
        t0 = time.perf_counter()
        for sample in samples:
            gt = renumber_instances(sample.inst)
            gt_centroids, gt_types = instance_centroids(gt), instance_classes(gt, sample.labels)[1:]
            image = sample.image if mpp == native_mpp else downsample(sample.image, FACTOR)
            labels = run(segment_image(image, model, card, run_settings, mpp=mpp, stain_source=stain)).labels
            inst, types = cells_from_labels(labels, **rules)
            scale = mpp / native_mpp  # map px -> patch px: pixel i of the coarse map covers patch px [2i, 2i + 2)
            centroids = instance_centroids(inst, len(types) - 1) * scale + (scale - 1) / 2
            metrics.add_cells(centroids, types[1:], gt_centroids, gt_types)
        seconds[name] = time.perf_counter() - t0
        scores[name] = metrics.compute()

    print(f"CoNSeP val ({len(samples)} patches), model {card.name} at {native_mpp} um/px, 20x = {coarse_mpp} um/px")
    print(f"{'run':<24} {'detection F1 (P / R)':<24} {'tumor F1':>8} {'non-tumor':>9} {'cells':>6} {'s':>6}")
    for name, s in scores.items():
        det = f"{s['detection_f1']:.3f} ({s['detection_precision']:.3f} / {s['detection_recall']:.3f})"
        print(
            f"{name:<24} {det:<24} {s['type_f1_tumor']:8.3f} {s['type_f1_non_tumor']:9.3f} "
            f"{s['n_pred_cells']:6d} {seconds[name]:6.1f}"
        )
    base = scores["native"]["detection_f1"]
    for name in list(scores)[1:]:
        print(f"detection F1 {name} / native: {scores[name]['detection_f1'] / base:.3f}")
    converted, pixels = (scores[k]["detection_f1"] for k in ("20x, rules converted", "20x, rules as pixels"))
    print(f"detection F1 rules converted / rules as pixels: {converted / pixels:.3f}")


if __name__ == "__main__":
    main()
