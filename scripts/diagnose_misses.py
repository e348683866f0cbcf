"""Where a model's detection and typing errors are, on folder pairs with instance maps (e.g. CoNSeP val).

Decides the classes as inference does (the card's logit bias, opening radius 2, the default cell rules), matches
cells as ``histoseg evaluate`` does, then prints:
- the true cells left unmatched: covered by predicted cells (merged with a neighbour or off-centre) or mostly
  predicted as background (< 20% covered), their median area and the share cut by the image edge;
- recall by true class and for cells on / off the image edge;
- the type confusion of the matched cells, and the tumor type F1 if every matched cell were typed right (what
  better detection alone could reach).

Usage: python scripts/diagnose_misses.py CHECKPOINT DATA_DIR
"""

from __future__ import annotations

import argparse

import numpy as np
from tune_postprocess import cached_logits

from napari_histoseg.analysis.instances import cells_from_labels
from napari_histoseg.analysis.metrics import (
    instance_centroids,
    instance_classes,
    match_centroids,
    renumber_instances,
    type_counts,
    type_f1_from_counts,
)
from napari_histoseg.analysis.opening import open_labels
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.training.evaluate import DEFAULT_OPENING_RADIUS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data_dir")
    args = p.parse_args()
    cache, bias = cached_logits(args.checkpoint, args.data_dir)
    shift = np.asarray(bias or np.zeros(cache[0][0].shape[0]), np.float32)[:, None, None]

    # One row per true cell: matched, area, on the image edge, covered fraction, class.
    rows = []
    confusion = np.zeros((3, 3), np.int64)  # true class (0 none, 1 tumor, 2 non-tumor) x predicted
    actual, perfect = np.zeros(6, np.int64), np.zeros(6, np.int64)
    for logits, gt, inst in cache:
        if inst is None:
            raise SystemExit(f"{args.data_dir}: needs instance maps (inst/) to tell cells apart")
        pred = open_labels((logits + shift).argmax(0).astype(np.uint8), DEFAULT_OPENING_RADIUS)
        pred_inst, pred_cls = cells_from_labels(pred)
        true_inst = renumber_instances(inst)
        true_cls = instance_classes(true_inst, gt)
        true_c = instance_centroids(true_inst)
        pairs, un_pred, un_true = match_centroids(instance_centroids(pred_inst, len(pred_cls) - 1), true_c, 12)
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


if __name__ == "__main__":
    main()
