"""Tune the post-processing of a trained model by validation score: the network runs once per image, then
the cheap steps are varied on its cached class scores.

The class scores are the engine's blended probabilities from the same call ``histoseg predict`` makes for an
image (``engine.jobs.segment_image``: tiles, Gaussian blending, stain normalisation pooled over the folder, the
card's logit bias), so a setting scores here what it would score in use. Varied on their logarithm: the logit
bias, ``tau`` times the card's ``logit_bias`` (``-log(class weight)``, see ``ModelCard.logit_bias``; ``tau = 1``
is what inference uses, ``0`` none; a checkpoint written before the card had the field takes it from
``--class-weights``), offsets added to the background, tumor and boundary scores on top of it, the opening
radius, the smallest cell area kept (inside the image and, for nuclei cut by its edge, at the edge) and the seed
rule that splits touching cells (``analysis.instances.split_touching``'s depth and ratio). Cells are matched as
``histoseg evaluate`` matches them (``analysis.metrics.SegmentationMetrics``). Prints one line per setting, then
the best by detection F1; with ``--json``, one JSON object (every setting and its scores, best first) as the
last line.

Usage: python scripts/tune_postprocess.py CHECKPOINT DATA_DIR [--class-weights RUN/class_weights.json] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from napari_histoseg.analysis.instances import (
    DEFAULT_EDGE_MIN_AREA,
    DEFAULT_MIN_AREA,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_SPLIT_RATIO,
)
from napari_histoseg.analysis.metrics import SegmentationMetrics
from napari_histoseg.analysis.opening import open_labels
from napari_histoseg.classes import BACKGROUND, BOUNDARY, TUMOR
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.fileio import json_safe
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import load_pairs, pooled_stain_stats


def class_scores(
    checkpoint: str | None, data_dir: str, stain_normalize: bool = True, device: str = "auto"
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], np.ndarray]:
    """(log-probabilities (C, H, W), gt labels, gt instances) per pair of ``data_dir``, and the card's logit bias.

    The probabilities come from ``segment_image`` with the default inference settings (the card's logit bias
    applied, as in use), before the opening; the stain statistics are pooled over the folder, as
    ``histoseg evaluate`` pools them.
    """
    model, card = load_model(checkpoint)
    samples, _ = load_pairs(find_pairs(data_dir))
    settings = InferenceSettings(
        probabilities=True, opening_radius=0, stain_normalize=stain_normalize, device=device, cell_typer=False
    )
    stain = pooled_stain_stats(samples) if stain_normalize else None
    out = []
    for sample in samples:
        job = segment_image(sample.image, model, card, settings, mpp=sample.mpp, name=sample.name, stain_source=stain)
        probabilities = run(job).probabilities
        scores = np.log(np.maximum(probabilities, 1e-12)).transpose(2, 0, 1)
        out.append((scores, sample.labels, sample.inst))
    bias = np.asarray(card.logit_bias or np.zeros(model.config.num_classes), dtype=np.float32)
    return out, bias


def _values(text: str, kind: type = float) -> list:
    return [kind(v) for v in text.split(",")]


def main() -> None:
    args = parse_args()
    cache, card_bias = class_scores(args.checkpoint, args.data_dir, not args.no_stain_norm, args.device)
    target_bias = card_bias
    if args.class_weights:
        weights = json.loads(Path(args.class_weights).read_text())["class_weights"]
        target_bias = -np.log(np.asarray(weights, np.float32))
    rows = []
    for tau, bg, tumor, boundary, radius in logit_grid(args):
        offset = np.zeros_like(card_bias)
        offset[[BACKGROUND, TUMOR, BOUNDARY]] = bg, tumor, boundary
        # The cached scores hold the card's bias already: swap it for tau times the target's, plus the offsets.
        shift = (tau * target_bias - card_bias + offset)[:, None, None]
        preds = [open_labels((scores + shift).argmax(0).astype(np.uint8), radius) for scores, _, _ in cache]
        for min_area, edge_min_area, depth, ratio in cell_rules(args):
            rule = {"min_area": min_area, "edge_min_area": edge_min_area, "split_depth": depth, "split_ratio": ratio}
            m = SegmentationMetrics(**rule)
            for pred, (_, gt, inst) in zip(preds, cache, strict=True):
                m.update(pred, gt, inst)
            s = m.compute()
            setting = {
                "tau": tau,
                "offsets": {"background": bg, "tumor": tumor, "boundary": boundary},
                "opening_radius": radius,
                **rule,
            }
            rows.append({"setting": setting, "scores": s})
            print(f"{describe(setting)}: {score_line(s)}", flush=True)
    rows.sort(key=lambda r: -r["scores"]["detection_f1"])
    print("\nbest by detection F1:")
    for row in rows[:5]:
        s = row["scores"]
        print(f"  {describe(row['setting'])}: det F1 {s['detection_f1']:.4f} tumor F1 {s['type_f1_tumor']:.4f}")
    if args.json:
        print(json.dumps(json_safe({"checkpoint": args.checkpoint, "data_dir": args.data_dir, "settings": rows})))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or 'bundled' for the bundled model")
    p.add_argument("data_dir")
    p.add_argument("--class-weights", help="class_weights.json of the training run (for the prior correction)")
    p.add_argument("--taus", default="0,0.25,0.5,0.75,1")
    p.add_argument("--radii", default="0,1,2,3")
    p.add_argument("--min-areas", default=f"12,16,{DEFAULT_MIN_AREA},24,30")
    p.add_argument("--edge-min-areas", default=f"{DEFAULT_EDGE_MIN_AREA},8,12", help="for cells touching the edge")
    p.add_argument("--background-offsets", default="0", help="added to the background score, e.g. 0,-0.4")
    p.add_argument("--tumor-offsets", default="0", help="added to the tumor score")
    p.add_argument("--boundary-offsets", default="0", help="added to the boundary score")
    p.add_argument("--split-depths", default=str(DEFAULT_SPLIT_DEPTH))
    p.add_argument("--split-ratios", default=str(DEFAULT_SPLIT_RATIO))
    p.add_argument("--no-stain-norm", action="store_true", help="score the images' own colours")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print every setting and its scores as JSON, last line")
    args = p.parse_args()
    if args.checkpoint == "bundled":
        args.checkpoint = None
    return args


def logit_grid(args: argparse.Namespace):
    return itertools.product(
        _values(args.taus), _values(args.background_offsets), _values(args.tumor_offsets),
        _values(args.boundary_offsets), _values(args.radii, int),
    )  # fmt: skip


def cell_rules(args: argparse.Namespace) -> list[tuple]:
    return list(
        itertools.product(
            _values(args.min_areas, int),
            _values(args.edge_min_areas, int),
            _values(args.split_depths),
            _values(args.split_ratios),
        )
    )


def describe(setting: dict) -> str:
    o = setting["offsets"]
    return (
        f"tau {setting['tau']:.2f} offsets bg {o['background']:+.2f} tumor {o['tumor']:+.2f} "
        f"boundary {o['boundary']:+.2f} radius {setting['opening_radius']} min_area {setting['min_area']:3d} "
        f"at the edge {setting['edge_min_area']:3d} split depth {setting['split_depth']:.1f} "
        f"ratio {setting['split_ratio']:.2f}"
    )


def score_line(s: dict) -> str:
    return (
        f"det F1 {s['detection_f1']:.4f} (P {s['detection_precision']:.3f} R {s['detection_recall']:.3f}) "
        f"tumor F1 {s['type_f1_tumor']:.4f} non-tumor F1 {s['type_f1_non_tumor']:.4f} cell Dice {s['mean_f1']:.4f}"
    )


if __name__ == "__main__":
    main()
