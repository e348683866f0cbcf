"""Correct and fine-tune: do a few corrected cells improve the bundled model on other images of the same hospital?

The loop a user runs in napari, through the same core calls the widgets make:

1. segment each of ``--corrected`` BRCA-M2C images of one hospital (TCGA site ``--site``) with the bundled model,
   as the Segment widget does (``engine.jobs.segment_image`` at the image's 0.5 um/px, stain normalisation on);
2. correct it as a user would with the fill bucket: for up to ``--cells`` annotated points per image, the predicted
   cell under the point is recoloured to the point's type (class 2 = tumor, 1 and 3 not) and marked reviewed
   (cells already of the right type are confirmed: reviewed, unchanged); points on no predicted cell are skipped;
3. "Add training pair": ``export_pairs.save_pair`` with the reviewed cells (``reviewed_from_edits``) and the
   image's um/px, as the Train widget saves it;
4. fine-tune with the Train widget's defaults (start from the default model, validation fraction 0.2, batch 8,
   patch 256, the fine-tuning optimiser of ``corrections.FINETUNE_DEFAULTS``); ``--epochs`` / ``--max-steps``
   shorten it on a CPU (the widget's 20 epochs are hours there);
5. score the bundled model and the fine-tuned best checkpoint on ``--held`` other images of that hospital
   (``training.evaluate_points.run_point_evaluation``: tumor type F1, per-image cellularity error) and on CoNSeP
   val (``jobs.evaluate.run_evaluation``, the predict path: detection F1), and print the figures as JSON.

Targets (issue 28): tumor type F1 up by >= 0.10 on the held-aside images after 5 corrected images, no class lost,
CoNSeP val detection F1 down by no more than 0.02.

    python benchmarks/bench_correct_finetune.py                   # 5 corrected images of A8, 8 held aside
    python benchmarks/bench_correct_finetune.py --quick           # a smoke run: 1+1 small crops, 1 step
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_histoseg.analysis.instances import cell_rules, cells_from_labels
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import default_model_path, load_model, segment_image
from napari_histoseg.export_pairs import reviewed_from_edits, save_pair
from napari_histoseg.jobs.evaluate import run_evaluation
from napari_histoseg.training.config import TrainConfig
from napari_histoseg.training.corrections import FINETUNE_DEFAULTS
from napari_histoseg.training.evaluate_points import run_point_evaluation
from napari_histoseg.training.image_files import read_image
from napari_histoseg.training.train import EpochEvent, TrainStart, run_training

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA_MPP = 0.5
TUMOR_POINT_CLASSES = (2,)
#: The Train widget's defaults (_napari/train_widget.py): start from the default model, these fields.
WIDGET_DEFAULTS = {"epochs": 20, "batch_size": 8, "patch": 256, "val_fraction": 0.2, "num_workers": 0}


def read_points(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([[float(r["y"]), float(r["x"]), int(r["class"])] for r in csv.DictReader(f)]).reshape(-1, 3)


def site_images(root: Path, site: str) -> list[str]:
    names = sorted(p.stem for p in (root / "input").iterdir() if p.suffix == ".png")
    return [n for n in names if n.split("-")[1] == site and (root / "points" / f"{n}.csv").is_file()]


def correct(labels: np.ndarray, points: np.ndarray, cells: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The user's correction: the predicted cell under each of up to ``cells`` points gets the point's type and is
    reviewed. Returns the corrected labels, the reviewed pixels and counts."""
    instances, _ = cells_from_labels(labels, **cell_rules(BRCA_MPP))
    order = np.random.default_rng(seed).permutation(len(points))
    corrected = labels.copy()
    touched = np.zeros(labels.shape, bool)
    seen: set[int] = set()
    recoloured = confirmed = missed = 0
    for i in order:
        if len(seen) >= cells:
            break
        y, x, cls = points[i]
        r, c = int(np.clip(round(y), 0, labels.shape[0] - 1)), int(np.clip(round(x), 0, labels.shape[1] - 1))
        k = int(instances[r, c])
        if k == 0 or k in seen:
            missed += k == 0
            continue
        seen.add(k)
        cell = (instances == k) & ((labels == TUMOR) | (labels == NON_TUMOR))
        want = TUMOR if int(cls) in TUMOR_POINT_CLASSES else NON_TUMOR
        if (corrected[cell] != want).any():
            recoloured += 1
        else:
            confirmed += 1
        corrected[cell] = want  # the fill bucket on the cell
        touched |= instances == k
    reviewed = reviewed_from_edits(corrected, touched)
    return corrected, reviewed, {"cells": len(seen), "recoloured": recoloured, "confirmed": confirmed, "missed": missed}


def link_subset(src: Path, names: list[str], dst: Path, subdirs: tuple[str, ...], suffixes: dict[str, str]) -> Path:
    for sub in subdirs:
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = dst / sub / f"{name}{suffixes[sub]}"
            if not link.is_symlink():  # a rerun with the same --out keeps its links
                os.symlink(src / sub / f"{name}{suffixes[sub]}", link)
    return dst


def crop_folder(src: Path, names: list[str], dst: Path, crop: int) -> Path:
    """A point folder of the top-left ``crop`` px of each image (quick runs)."""
    from PIL import Image

    (dst / "input").mkdir(parents=True, exist_ok=True)
    (dst / "points").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(read_image(src / "input" / f"{name}.png")[:crop, :crop]).save(dst / "input" / f"{name}.png")
        pts = read_points(src / "points" / f"{name}.csv")
        pts = pts[(pts[:, 0] < crop) & (pts[:, 1] < crop)]
        rows = ["y,x,class", *(f"{y:g},{x:g},{int(c)}" for y, x, c in pts)]
        (dst / "points" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return dst


def point_scores(folder: Path, checkpoint: str | None, settings: InferenceSettings) -> dict:
    result = run_point_evaluation(folder, checkpoint, settings, mpp=BRCA_MPP, tumor_classes=list(TUMOR_POINT_CLASSES))
    m = result.metrics
    keys = ("images", "points", "detection_f1", "type_f1_tumor", "type_f1_non_tumor", "cellularity_mae")
    out = {k: m.get(k) for k in keys}
    rows = result.rows
    out["tumor_cells"] = int(sum(r.tumor_cells for r in rows))
    out["non_tumor_cells"] = int(sum(r.cells - r.tumor_cells for r in rows))
    out["cellularity_error_per_image"] = {
        r.name: round(abs(r.reported_cellularity - r.true_cellularity), 4) for r in rows
    }
    return out


def consep_scores(folder: Path, checkpoint: str) -> dict:
    m = run_evaluation(folder, checkpoint).metrics
    return {k: m.get(k) for k in ("detection_f1", "type_f1_tumor", "type_f1_non_tumor")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "brca-m2c" / "train")
    parser.add_argument("--consep", type=Path, default=DATA / "consep" / "val")
    parser.add_argument("--site", default="A8")
    parser.add_argument("--corrected", type=int, default=5, help="images corrected and added as pairs")
    parser.add_argument("--cells", type=int, default=40, help="cells corrected (or confirmed) per image")
    parser.add_argument("--held", type=int, default=8, help="other images of the site scored before and after")
    parser.add_argument("--epochs", type=int, default=WIDGET_DEFAULTS["epochs"])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--consep-images", type=int, default=0, help="score only the first N CoNSeP val pairs")
    parser.add_argument("--crop", type=int, default=0, help="use the top-left N px of every BRCA image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", default=None, help="override the fine-tuning default (experiments)")
    parser.add_argument("--lr", type=float, default=None, help="override the fine-tuning default (experiments)")
    parser.add_argument("--warmup", type=int, default=None, help="override the fine-tuning default (experiments)")
    parser.add_argument("--keep-weight", type=float, default=None, help="override the default (experiments)")
    parser.add_argument("--keep-types", type=float, default=None, help="override the default (experiments)")
    parser.add_argument("--trainable", default=None, help="override the default (experiments): all, decoder, head")
    parser.add_argument("--skip-consep", action="store_true", help="leave out the CoNSeP check")
    parser.add_argument("--only-compare", action="store_true", help="fine-tune only the --compare candidates")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        help="also fine-tune with these optimizer:lr:warmup (e.g. rmsprop:1e-4:0) or key=value,... (keep_types=0.3)",
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the pairs and the run here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1+1 images cropped to 256 px, 1 step")
    args = parser.parse_args(argv)
    if args.quick:
        args.corrected, args.held, args.cells, args.crop = 1, 1, 10, args.crop or 256
        args.epochs, args.max_steps, args.samples_per_epoch = 1, 1, 2
        args.consep_images = args.consep_images or 1
        WIDGET_DEFAULTS["batch_size"] = 2

    return args


def choose_images(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The images of the site to correct and those to score, in a seeded random order."""
    names = site_images(args.data, args.site)
    order = np.random.default_rng(args.seed).permutation(len(names))
    chosen = [names[i] for i in order]
    if len(chosen) < args.corrected + args.held:
        sys.exit(f"site {args.site} has {len(chosen)} images; need {args.corrected + args.held}")
    corrected_names, held_names = chosen[: args.corrected], chosen[args.corrected : args.corrected + args.held]

    return corrected_names, held_names


def make_pairs(args: argparse.Namespace, source: Path, names: list[str], work: Path) -> tuple[Path, dict]:
    """Segment, correct and save each image as the Train widget's pair (reused from ``work`` on a rerun)."""
    settings = InferenceSettings(cell_typer=False)  # the networks alone, before and after
    model, card = load_model(None)
    pairs = work / "pairs"
    corrections = cached(work / "corrections.json") or {}
    for k, name in enumerate(names):
        if name in corrections:  # a rerun with the same --out reuses the pairs it saved
            continue
        image = read_image(source / "input" / f"{name}.png")
        labels = run(segment_image(image, model, card, settings, mpp=BRCA_MPP, name=name)).labels
        fixed, reviewed, counts = correct(labels, read_points(source / "points" / f"{name}.csv"), args.cells, k)
        save_pair(image, fixed, pairs, name, reviewed=reviewed, mpp=BRCA_MPP)
        corrections[name] = counts
        print(f"corrected {name}: {counts}", file=sys.stderr)
        (work / "corrections.json").write_text(json.dumps(corrections))

    return pairs, corrections


def candidate_options(args: argparse.Namespace) -> list[dict]:
    """The fine-tuning options to run: the defaults (with overrides), then each ``--compare``."""
    candidates = [dict(FINETUNE_DEFAULTS)]
    for key in ("optimizer", "lr", "warmup", "keep_weight", "keep_types", "trainable"):
        if getattr(args, key) is not None:
            candidates[0][key] = getattr(args, key)
    for spec in args.compare:  # optimizer:lr:warmup (e.g. rmsprop:1e-4:0), or key=value,... (e.g. keep_types=0.3)
        if "=" in spec:
            pairs_ = dict(item.split("=") for item in spec.split(","))
            candidates.append({**candidates[0], **{k: v if k == "trainable" else float(v) for k, v in pairs_.items()}})
            continue
        optimizer, lr, warmup = spec.split(":")
        candidates.append({**candidates[0], "optimizer": optimizer, "lr": float(lr), "warmup": int(warmup)})
    if args.only_compare:
        candidates = candidates[1:]

    return candidates


def delta(a, b):
    return None if a is None or b is None else round(b - a, 4)


def fine_tune_and_score(k: int, options: dict, args: argparse.Namespace, ctx: dict) -> dict:
    """One fine-tune with ``options`` on the pairs, scored on the held images and CoNSeP val."""
    work, pairs, init, held_dir, consep = ctx["work"], ctx["pairs"], ctx["init"], ctx["held_dir"], ctx["consep"]
    settings, before, consep_before, skip = ctx["settings"], ctx["before"], ctx["consep_before"], ctx["skip"]
    run_dir = work / f"run{k}"
    if run_dir.exists():  # a rerun: a fresh run folder
        run_dir = work / f"run{k}-{time.strftime('%H%M%S')}"
    config = TrainConfig(
        train_dir=str(pairs),
        out=str(run_dir),
        init=init,
        val_fraction=WIDGET_DEFAULTS["val_fraction"],
        epochs=args.epochs,
        batch_size=WIDGET_DEFAULTS["batch_size"],
        patch=WIDGET_DEFAULTS["patch"],
        num_workers=WIDGET_DEFAULTS["num_workers"],
        max_steps=args.max_steps,
        samples_per_epoch=args.samples_per_epoch,
        seed=args.seed,
        **options,
    )
    t_train = time.perf_counter()
    result = run_training(config, on_event=show)
    train_seconds = time.perf_counter() - t_train
    review = json.loads((Path(result.run_dir) / "review.json").read_text())
    after_ckpt = result.best_checkpoint
    after = point_scores(held_dir, after_ckpt, settings)
    consep_after = skip if args.skip_consep else consep_scores(consep, after_ckpt)
    best_review = review["before"] if result.best_epoch == 0 else review["epochs"][result.best_epoch - 1]
    last_review = review["epochs"][-1] if review["epochs"] else review["before"]
    lost = [
        name for c, name in ((1, "tumor"), (2, "non-tumor"), (3, "boundary"))
        if review["before"]["class_share"][c] > 0 and best_review["class_share"][c] == 0
    ]  # fmt: skip
    change = {
        "tumor_type_f1": delta(before["type_f1_tumor"], after["type_f1_tumor"]),
        "cellularity_mae": delta(before["cellularity_mae"], after["cellularity_mae"]),
        "consep_detection_f1": delta(consep_before["detection_f1"], consep_after["detection_f1"]),
    }
    entry = {
        "config": {
            key: getattr(config, key)
            for key in (
                "optimizer",
                "lr",
                "warmup",
                "keep_weight",
                "keep_types",
                "trainable",
                "epochs",
                "batch_size",
                "patch",
            )
        }
        | {"max_steps": args.max_steps, "samples_per_epoch": args.samples_per_epoch},
        "best_epoch": result.best_epoch,
        "epochs_done": result.epochs_done,
        "train_seconds": round(train_seconds, 1),
        "review_before": review["before"],
        "review_best": best_review,
        "review_last": last_review,
        "held_after": after,
        "consep_after": consep_after,
        "change": change,
        "classes_lost": lost,
        "targets_met": {
            "tumor_type_f1_up_0.10": change["tumor_type_f1"] is not None and change["tumor_type_f1"] >= 0.10,
            "no_class_lost": not lost and after["tumor_cells"] > 0 and after["non_tumor_cells"] > 0,
            "consep_detection_f1_down_at_most_0.02": change["consep_detection_f1"] is not None
            and change["consep_detection_f1"] >= -0.02,
        },
    }
    print(f"run {k} {options}: {change}", file=sys.stderr)
    return entry


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    corrected_names, held_names = choose_images(args)
    work = args.out or Path(tempfile.mkdtemp(prefix="histoseg-correct-"))
    work.mkdir(parents=True, exist_ok=True)
    source = args.data
    if args.crop:
        source = crop_folder(args.data, corrected_names + held_names, work / "cropped", args.crop)
    held_dir = link_subset(source, held_names, work / "held", ("input", "points"), {"input": ".png", "points": ".csv"})

    pairs, corrections = make_pairs(args, source, corrected_names, work)
    settings = InferenceSettings(cell_typer=False)  # the networks alone, before and after
    consep = args.consep
    if args.consep_images:
        stems = sorted(p.stem for p in (consep / "input").iterdir())[: args.consep_images]
        consep = link_subset(consep, stems, work / "consep", ("input", "gt"), {"input": ".png", "gt": "_gt.png"})

    init = str(default_model_path())
    before = cached(work / "held_before.json") or point_scores(held_dir, None, settings)
    (work / "held_before.json").write_text(json.dumps(before))
    skip = {"detection_f1": None}
    consep_before = skip if args.skip_consep else (cached(work / "consep_before.json") or consep_scores(consep, init))
    (work / "consep_before.json").write_text(json.dumps(consep_before))
    ctx = {
        "work": work, "pairs": pairs, "init": init, "held_dir": held_dir, "consep": consep, "settings": settings,
        "before": before, "consep_before": consep_before, "skip": skip,
    }  # fmt: skip
    runs = [fine_tune_and_score(k, options, args, ctx) for k, options in enumerate(candidate_options(args))]
    figures = {
        "site": args.site,
        "corrected_images": corrected_names,
        "corrections": corrections,
        "held_images": held_names,
        "crop": args.crop or None,
        "held_before": before,
        "consep_before": consep_before,
        "consep_images": args.consep_images or "all",
        "runs": runs,  # the first with the defaults (FINETUNE_DEFAULTS, unless --only-compare), then --compare
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(figures, indent=2, default=float)
    (work / "figures.json").write_text(text + "\n")
    print(text)
    return figures


def cached(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def show(event) -> None:
    if isinstance(event, TrainStart):
        print(f"training: {event.train_images} pairs, {event.steps_per_epoch} steps/epoch", file=sys.stderr)
    elif isinstance(event, EpochEvent):
        print(
            f"epoch {event.epoch}: loss {event.train_loss:.4f} score {event.score:.4f} "
            f"agreement {event.val.get('review_agreement')} held {event.val.get('review_held_agreement')} "
            f"untouched changed {event.val.get('untouched_changed')} best epoch {event.best_epoch}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
