"""``histoseg train``: argparse over :func:`napari_histoseg.jobs.train.run_train`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..jobs.progress import Progress


def _train_report(progress: Progress) -> None:
    """The run's start and each epoch, on stderr."""
    from ..training.train import EpochEvent, TrainStart

    event = progress.detail
    if isinstance(event, TrainStart):
        weights = ", ".join(f"{w:.2f}" for w in event.class_weights)
        print(
            f"training {event.parameters / 1e6:.2f} M parameters on {event.device}: {event.train_images} images, "
            f"{event.val_images} for validation, {event.steps_per_epoch} steps per epoch, "
            f"class weights [{weights}], epochs {event.start_epoch}..{event.epochs}",
            file=sys.stderr,
        )
    elif isinstance(event, EpochEvent):
        val = event.val
        print(
            f"epoch {event.epoch}/{event.epochs}  loss {event.train_loss:.4f}  score {event.score:.4f}  "
            f"detection F1 {val.get('detection_f1', float('nan')):.3f}  "
            f"tumor F1 {val.get('type_f1_tumor', float('nan')):.3f}  "
            f"{'best ' if event.is_best else ''}{event.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def cmd_train(args: argparse.Namespace) -> int:
    from ..jobs.train import run_train
    from ..training.config import TrainConfig

    options = vars(args)
    config = TrainConfig(**{f.name: options[f.name] for f in fields(TrainConfig) if f.name in options})
    out = Path(config.out).absolute()
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders a run would create
    try:
        result = run_train(config, resume=args.resume, on_progress=_train_report)
    except BaseException:
        for folder in made:  # a run refused before its first file (e.g. --init of another width) leaves nothing
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    state = "cancelled" if result.cancelled else "finished"
    print(
        f"{state} after {result.epochs_done} epochs; best epoch {result.best_epoch} "
        f"(score {result.best_score:.4f}): {result.best_checkpoint}"
    )
    return 130 if result.cancelled else 0


def _add_train(sub) -> None:
    from ..training.config import TRAINABLE, TrainConfig

    defaults = TrainConfig(train_dir="", out="")
    p = sub.add_parser("train", help="train or fine-tune a model on folder pairs (input/x.png + gt/x_gt.png)")
    p.add_argument("train_dir", help="folder with input/ and gt/")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv, config.json")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", dest="val_dir", help="validation folder pairs")
    val.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="hold out whole images")
    p.add_argument("--group-regex", help="regex whose first group names the source image of a patch")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    p.add_argument("--patch", type=int, default=defaults.patch, help="patch size in px")
    p.add_argument("--optimizer", default=defaults.optimizer, help="rmsprop, adam, adamw or sgd")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--scheduler", default=defaults.scheduler, help="cosine, plateau or none")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="warm-up steps")
    p.add_argument("--init", help="checkpoint to fine-tune from")
    p.add_argument("--width", type=float, help="network width multiplier (1.0 = 4.1 M parameters)")
    p.add_argument("--stain-jitter", type=float, default=defaults.stain_jitter, help="H&E colour jitter strength")
    p.add_argument("--samples-per-epoch", type=int)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-workers", type=int)
    p.add_argument(
        "--no-amp", dest="amp", action="store_false", help="no bf16 autocast (CUDA, CPUs with AMX or AVX512-BF16)"
    )
    p.add_argument("--model-mpp", type=float, help="microns per pixel of the training images (CoNSeP: 0.25)")
    p.add_argument("--select-metric", default=defaults.select_metric, help="validation score that picks the best")
    p.add_argument("--val-every", type=int, default=defaults.val_every)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--opening-radius", type=int, default=defaults.opening_radius)
    p.add_argument(
        "--ema", type=float, help="validate and save a moving average of the weights with this decay (e.g. 0.99)"
    )
    p.add_argument(
        "--border-weight",
        type=float,
        default=defaults.border_weight,
        help="U-Net's w0: extra loss weight between touching cells (e.g. 10; 0 = none)",
    )
    p.add_argument(
        "--border-sigma", type=float, default=defaults.border_sigma, help="width (px) of the border weight's falloff"
    )
    p.add_argument(
        "--freeze-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep BatchNorm statistics fixed (default: when fine-tuning with --init)",
    )
    p.add_argument(
        "--keep-weight",
        type=float,
        default=defaults.keep_weight,
        help="corrected pairs (reviewed/<name>.png): weight of the term holding the unreviewed pixels at a frozen "
        "copy of the starting model's output (0 = ignore them; docs/fine-tuning.md)",
    )
    p.add_argument(
        "--keep-types",
        type=float,
        default=defaults.keep_types,
        help="how much that term holds the unreviewed cells' types too (0 = only where cells are and end; 1 = all)",
    )
    p.add_argument(
        "--trainable",
        choices=TRAINABLE,
        default=defaults.trainable,
        help="train all layers, only the decoder side, or only the head (default: all)",
    )
    _add_point_options(p, defaults.points_share)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)


def _add_point_options(p: argparse.ArgumentParser, points_share: float) -> None:
    pts = p.add_argument_group("point-labelled data (input/<name>.png + points/<name>.csv with y,x,class)")
    pts.add_argument("--points", dest="points_dirs", action="append", metavar="DIR", help="train on it too")
    pts.add_argument("--points-val", metavar="DIR", help="score it at every validation (joins the selection score)")
    pts.add_argument("--points-mpp", type=float, help="um/px of the point folders (default: their points.json)")
    pts.add_argument("--tumor-classes", type=int, nargs="+", help="point classes that are tumor (BRCA-M2C: 2)")
    pts.add_argument("--exclude-sites", nargs="+", metavar="SITE", help="TCGA site codes to keep out of training")
    pts.add_argument("--points-share", type=float, default=points_share, help="share of patches from point folders")
    pts.add_argument("--teacher", help="checkpoint whose cells the points type (default: --init, else bundled)")
