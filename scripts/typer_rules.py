"""How the cell typer's answer is combined with the segmentation's, scored as ``histoseg evaluate`` scores points.

    python scripts/typer_rules.py --maps runs/label_maps [--train] [--typer WEIGHTS]

Reads the label maps of ``cache_label_maps.py``, types every cell found with the typer, and prints tumor type F1
(strict, and by the paper's equation) and per-image cellularity MAE / r for: the segmentation's types, the typer's
alone, and the typer's with cells under A um^2 set non-tumor, left to the segmentation, or tumor only where both say
so, for several A. BRCA-M2C val and site AC by default, and CoNSeP val (detection and tumor type F1 against its
instance maps, as ``histoseg evaluate`` scores pairs); ``--train``: the A7 and A8 train images the typer learnt
from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from train_cell_typer import consep_images, point_images  # the typer's own image preparation (scripts/)

from napari_histoseg.analysis.metrics import SegmentationMetrics
from napari_histoseg.analysis.point_scores import score_image, summarize_by_group
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.engine.cell_typer import WEIGHTS, load_cell_typer, typer_answers
from napari_histoseg.engine.jobs import load_model
from napari_histoseg.training.points import read_spec, site_of

MPP = 0.5
CONSEP_MPP = 0.25
KEYS = (
    "type_f1_tumor",
    "type_f1_tumor_paper",
    "cellularity_mae",
    "cellularity_r",
    "cellularity_mae_at_points",
    "cellularity_r_at_points",
)


def typed_cells(root: Path, sites, maps: Path, typer, target) -> list:
    """(sample, centroids, segmentation classes, typer p(tumor), areas um^2) of every image."""
    spec = read_spec(root, mpp=MPP, tumor_classes=[2])
    out = []
    for s, image in point_images(root, spec, target, only_sites=sites):
        labels = np.load(maps / f"brca-m2c_{root.name}_{s.name}.npy")
        instances, classes, centres, p = typer_answers(labels, image, MPP, typer)
        area = np.bincount(instances.ravel(), minlength=len(classes))[1:] * MPP * MPP
        out.append((s, s.is_tumor(spec), centres, classes[1:], p, area))
    return out


def consep_cells(root: Path, maps: Path, typer, target) -> list:
    """(sample, labels, instances, segmentation classes, typer p(tumor), areas um^2) of every CoNSeP image."""
    out = []
    for s, image in consep_images(root, target):
        labels = np.load(maps / f"consep_{root.name}_{s.name}.npy")
        instances, classes, _, p = typer_answers(labels, image, CONSEP_MPP, typer)
        area = np.bincount(instances.ravel(), minlength=len(classes))[1:] * CONSEP_MPP**2
        out.append((s, labels, instances, classes[1:], p, area))
    return out


def consep_scores(cells: list, rule) -> dict:
    """Detection and type F1 of CoNSeP images with each cell's tumor / non-tumor pixels set by ``rule``."""
    metrics = SegmentationMetrics()
    for s, labels, instances, cl, p, a in cells:
        typed = np.concatenate(([0], rule(cl, p, a))).astype(labels.dtype)
        cell_px = (instances > 0) & ((labels == TUMOR) | (labels == NON_TUMOR))
        out = labels.copy()
        out[cell_px] = typed[instances[cell_px]]
        metrics.update(out, s.labels, s.inst)
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--typer", type=Path, default=WEIGHTS)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    brca = args.data / "brca-m2c"
    sets = {"A7+A8 train": (brca / "train", ["A7", "A8"])}
    if not args.train:
        sets = {"val": (brca / "val", None), "AC": (brca / "train", ["AC"])}
    _, card = load_model(None)
    typer = load_cell_typer(args.typer)
    rules = {"segmentation": lambda cl, p, a: cl, "typer alone": lambda cl, p, a: np.where(p >= 0.5, TUMOR, NON_TUMOR)}
    for t in (6, 8, 10, 12, 15, 20):
        rules[f"typer, < {t} um2 non-tumor"] = lambda cl, p, a, t=t: np.where((a >= t) & (p >= 0.5), TUMOR, NON_TUMOR)
        rules[f"typer, < {t} um2 segmentation's"] = lambda cl, p, a, t=t: np.where(
            a >= t, np.where(p >= 0.5, TUMOR, NON_TUMOR), cl
        )
        rules[f"typer, < {t} um2 tumor if both say so"] = lambda cl, p, a, t=t: np.where(
            (p >= 0.5) & ((a >= t) | (cl == TUMOR)), TUMOR, NON_TUMOR
        )
    print(f"{'set':12s} {'rule':36s} " + " ".join(f"{k[:24]:>24s}" for k in KEYS))
    for name, (root, sites) in sets.items():
        cells = typed_cells(root, sites, args.maps, typer, card.stain_stats)
        for rule_name, rule in rules.items():
            rows = [
                score_image(s.name, site_of(s.name), c, rule(cl, p, a).astype(np.uint8), s.points, t, 3 / MPP)
                for s, t, c, cl, p, a in cells
            ]
            scores = summarize_by_group(rows)["all"]
            print(f"{name:12s} {rule_name:36s} " + " ".join(f"{scores[k]:24.3f}" for k in KEYS), flush=True)
    if args.train:
        return
    cells = consep_cells(args.data / "consep" / "val", args.maps, typer, card.stain_stats)
    print(f"{'set':12s} {'rule':36s} {'detection F1':>24s} {'tumor type F1':>24s}")
    for rule_name, rule in rules.items():
        scores = consep_scores(cells, rule)
        print(f"{'CoNSeP val':12s} {rule_name:36s} {scores['detection_f1']:24.3f} {scores['type_f1_tumor']:24.3f}")


if __name__ == "__main__":
    main()
