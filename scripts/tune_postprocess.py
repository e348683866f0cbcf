"""Tune the post-processing of a trained model by validation score: the network runs once per image, then
the cheap steps are varied on its cached class scores.

Varied: the logit bias, ``tau`` times the card's ``logit_bias`` (``-log(class weight)``, see
``ModelCard.logit_bias``; ``tau = 1`` is what inference uses, ``0`` none; a checkpoint written before the card
had the field takes it from ``--class-weights``), offsets added to the background, tumor and boundary logits on
top of it, the opening radius, the smallest cell area kept (inside the image and, for nuclei cut by its edge,
at the edge) and the seed rule that splits touching cells
(``postprocess.split_touching``'s depth and ratio). Prints one line per setting, then the best by detection F1.

Usage: python scripts/tune_postprocess.py CHECKPOINT DATA_DIR [--class-weights RUN/class_weights.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from napari_histoseg.analysis.instances import (
    DEFAULT_EDGE_MIN_AREA,
    DEFAULT_MIN_AREA,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_SPLIT_RATIO,
)
from napari_histoseg.analysis.metrics import SegmentationMetrics
from napari_histoseg.analysis.opening import open_labels
from napari_histoseg.engine.stain_transform import normalizer_for
from napari_histoseg.model.checkpoint import load_checkpoint
from napari_histoseg.training.data import find_pairs, load_pairs, pooled_stain_stats
from napari_histoseg.training.dataset import EvalDataset


def cached_logits(
    checkpoint: str, data_dir: str, stain_normalize: bool = True
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list]:
    """(logits (C, H, W), gt labels, gt instances) per image of ``data_dir``, and the card's logit bias.

    The images are stain-normalised as ``histoseg evaluate`` does (folder colours pooled) unless told not to.
    """
    model, card = load_checkpoint(checkpoint, device="cpu")
    model.eval()
    samples, _ = load_pairs(find_pairs(data_dir))
    normalize = None
    if stain_normalize and card.stain_stats is not None:
        normalize = normalizer_for(pooled_stain_stats(samples), card.stain_stats)
    dataset = EvalDataset(samples, multiple=int(model.config.divisor))
    out = []
    with torch.inference_mode():
        for i in range(len(dataset)):
            image, labels, inst, (h, w), _ = dataset[i]
            if normalize is not None:
                image = normalize(image)
            logits = model(image[None])[0, :, :h, :w].float().numpy()
            out.append((logits, labels[:h, :w].numpy(), inst[:h, :w].numpy() if inst.numel() else None))
    return out, card.logit_bias


def _values(text: str, kind: type = float) -> list:
    return [kind(v) for v in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data_dir")
    p.add_argument("--class-weights", help="class_weights.json of the training run (for the prior correction)")
    p.add_argument("--taus", default="0,0.25,0.5,0.75,1")
    p.add_argument("--radii", default="0,1,2,3")
    p.add_argument("--min-areas", default=f"12,16,{DEFAULT_MIN_AREA},24,30")
    p.add_argument("--edge-min-areas", default=f"{DEFAULT_EDGE_MIN_AREA},8,12", help="for cells touching the edge")
    p.add_argument("--background-offsets", default="0", help="added to the background logit, e.g. 0,-0.4")
    p.add_argument("--tumor-offsets", default="0", help="added to the tumor logit")
    p.add_argument("--boundary-offsets", default="0", help="added to the boundary logit")
    p.add_argument("--split-depths", default=str(DEFAULT_SPLIT_DEPTH))
    p.add_argument("--split-ratios", default=str(DEFAULT_SPLIT_RATIO))
    p.add_argument("--no-stain-norm", action="store_true", help="score the images' own colours")
    args = p.parse_args()

    cache, card_bias = cached_logits(args.checkpoint, args.data_dir, stain_normalize=not args.no_stain_norm)
    bias = np.asarray(card_bias or np.zeros(cache[0][0].shape[0]), dtype=np.float32)
    if args.class_weights:
        bias = -np.log(np.asarray(json.loads(Path(args.class_weights).read_text())["class_weights"], np.float32))
    rows = []
    logit_grid = itertools.product(
        _values(args.taus), _values(args.background_offsets), _values(args.tumor_offsets),
        _values(args.boundary_offsets), _values(args.radii, int),
    )  # fmt: skip
    rules = list(
        itertools.product(
            _values(args.min_areas, int),
            _values(args.edge_min_areas, int),
            _values(args.split_depths),
            _values(args.split_ratios),
        )
    )
    for tau, bg, tumor, boundary, radius in logit_grid:
        offset = np.zeros_like(bias)
        offset[[0, 1, 3]] = bg, tumor, boundary
        shift = (tau * bias + offset)[:, None, None]
        preds = [open_labels((lg + shift).argmax(0).astype(np.uint8), radius) for lg, _, _ in cache]
        for min_area, edge_min_area, depth, ratio in rules:
            m = SegmentationMetrics(
                min_area=min_area, edge_min_area=edge_min_area, split_depth=depth, split_ratio=ratio
            )
            for pred, (_, gt, inst) in zip(preds, cache, strict=True):
                m.update(pred, gt, inst)
            s = m.compute()
            setting = (
                f"tau {tau:.2f} offsets bg {bg:+.2f} tumor {tumor:+.2f} boundary {boundary:+.2f} radius {radius} "
                f"min_area {min_area:3d} at the edge {edge_min_area:3d} split depth {depth:.1f} ratio {ratio:.2f}"
            )
            rows.append((setting, s))
            print(
                f"{setting}: det F1 {s['detection_f1']:.4f} (P {s['detection_precision']:.3f} "
                f"R {s['detection_recall']:.3f}) tumor F1 {s['type_f1_tumor']:.4f} "
                f"non-tumor F1 {s['type_f1_non_tumor']:.4f} cell Dice {s['mean_f1']:.4f}",
                flush=True,
            )
    print("\nbest by detection F1:")
    for setting, s in sorted(rows, key=lambda r: -r[1]["detection_f1"])[:5]:
        print(f"  {setting}: det F1 {s['detection_f1']:.4f} tumor F1 {s['type_f1_tumor']:.4f}")


if __name__ == "__main__":
    main()
