"""The ``histoseg`` command: the same jobs as the napari widgets, from a shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .engine.allocator import tune_cpu_allocator
from .engine.mpp_option import mpp_option

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".ndpi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class CliError(ValueError):
    """An impossible request, reported as one ``error:`` line with exit status 2."""


class _Progress:
    """One-line progress on stderr (silent when not a terminal, except at the end)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, event) -> None:
        from .engine.infer import InferenceProgress

        if self.quiet or not isinstance(event, InferenceProgress):
            return
        now = time.monotonic()
        if now - self.last < 1.0 and event.blocks_done < event.blocks_total:
            return
        self.last = now
        eta = f"{event.eta_seconds:.0f}s" if event.eta_seconds is not None else "?"
        print(
            f"\rblocks {event.blocks_done}/{event.blocks_total}  {event.windows_per_second:.1f} windows/s  ETA {eta}",
            end="" if event.blocks_done < event.blocks_total else "\n",
            file=sys.stderr,
            flush=True,
        )


_FP32_HELP = "compute in float32 throughout (default: bf16 autocast where faster: CUDA, CPUs with AMX or AVX512-BF16)"
_TTA_HELP = "test-time augmentation: average the logits over the four flips of the image (4x the work, more accurate)"
_NO_STAIN_HELP = "do not map the image's stain colours onto the model's training data (Reinhard normalisation)"


def _settings(args: argparse.Namespace):
    from .engine.infer import InferenceSettings

    return InferenceSettings(
        tile=args.tile,
        overlap=args.overlap,
        block=args.block,
        opening_radius=args.opening_radius,
        skip_background=not args.no_tissue_skip,
        probabilities=args.probabilities,
        stain_normalize=not args.no_stain_norm,
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
        amp=not args.fp32,
        test_time_flips=args.tta,
    )


def _folder_images(folder: Path) -> list[Path]:
    """The images of a folder, without hidden files and the masks histoseg itself wrote there."""
    from .io.outputs import read_manifest

    own = read_manifest(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in own
    )


def prediction_names(images: list[Path]) -> dict[Path, str]:
    """``<stem>_pred.png`` for each image; images sharing a stem (x.png, x.tif) get ``<stem>_<ext>_pred.png``."""
    from collections import Counter

    stems = Counter(p.stem.casefold() for p in images)
    names = {
        p: f"{p.stem}_pred.png" if stems[p.stem.casefold()] == 1 else f"{p.stem}_{p.suffix[1:].lower()}_pred.png"
        for p in images
    }
    clashes = [n for n, k in Counter(n.casefold() for n in names.values()).items() if k > 1]
    if clashes:
        same = [p.name for p, n in names.items() if n.casefold() == clashes[0]]
        raise CliError(f"{same[0]}: {', '.join(same)} would all be written to {clashes[0]}; rename one")
    return names


def _write_png(path: Path, rgb) -> None:
    import imageio.v3 as iio

    from .fileio import atomic_write

    atomic_write(path, iio.imwrite("<bytes>", rgb, extension=".png"))


def _predict_folder(args, model, card, settings) -> dict:
    from .classes import labels_to_rgb
    from .engine.infer import run
    from .engine.jobs import segment_image
    from .io.outputs import check_not_input, check_replaceable, read_manifest, write_manifest
    from .training.data import read_image

    folder, out = Path(args.input), Path(args.out)
    images = _folder_images(folder)
    if not images:
        raise CliError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    check_not_input(out, images)
    names = prediction_names(images)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is a file; --out must be a folder for a folder of images")
    out.mkdir(parents=True, exist_ok=True)
    own = read_manifest(out)
    check_replaceable([out / n for n in names.values()], own)  # before any work

    totals = [0, 0, 0, 0]
    per_image, failed, factors = {}, {}, {}
    for path in images:
        try:
            image = read_image(path)
            mpp = args.mpp
            if mpp == "auto":
                from .engine.mpp_estimate import auto_mpp

                mpp = auto_mpp(image, name=path.name)
            result = run(segment_image(image, model, card, settings, mpp=mpp, name=path.name))
            own.add(names[path])
            write_manifest(out, own)  # first: a mask histoseg wrote is known as its own, even if cut short
            _write_png(out / names[path], labels_to_rgb(result.labels))
        except (ValueError, OSError, MemoryError) as err:  # one bad file: report it, go on with the others
            failed[path.name] = _describe(err)
            print(f"error: {path}: {failed[path.name]}", file=sys.stderr)
            continue
        per_image[path.name] = result.class_counts
        factors[path.name] = result.plan.factor  # model px per image px (--mpp against the model's resolution)
        totals = [a + b for a, b in zip(totals, result.class_counts, strict=True)]
    summary = {"images": len(images), "pixels_per_class_total": totals, "per_image": per_image, "out": str(out)}
    summary["outputs"] = {p.name: names[p] for p in images if p.name in per_image}
    summary["resample_factor"] = factors
    summary["failed"] = failed
    return summary


def _describe(err: BaseException) -> str:
    """One line for an error: an OS error as ``path: reason``."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    if isinstance(err, MemoryError):
        return f"out of memory ({err}); use a smaller --tile, --block or --batch-size"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _predict_slide(args, model, card, settings) -> dict:
    from .engine.infer import run
    from .engine.jobs import segment_slide
    from .io.slide import open_slide

    options = {"level": args.level, "input_mpp": args.mpp, "overwrite": args.overwrite}
    with open_slide(args.input) as slide:
        if args.mpp == "auto":
            from .engine.mpp_estimate import auto_mpp

            options["input_mpp"] = auto_mpp(slide.levels, stated=slide.mpp[0], name=slide.path.name)
        if args.scheduler:
            from .engine.distributed import connect, segment_slide_distributed
            from .engine.jobs import default_model_path

            checkpoint = args.model or default_model_path()
            with connect(args.scheduler) as client:
                job = segment_slide_distributed(slide, checkpoint, args.out, settings, client, **options)
                result = run(job, on_event=_Progress(args.json))
                if args.scheduler.startswith("local:"):
                    client.cluster.close()
        else:
            job = segment_slide(slide, model, card, args.out, settings, **options)
            result = run(job, on_event=_Progress(args.json))
    summary = result.summary()
    summary["out"] = str(args.out)
    if not args.no_cells:
        from .io.export import exports_whole, write_slide_outputs

        # A rerun that recomputed nothing keeps its exports when they are whole; otherwise they are (re)written.
        outputs = exports_whole(result.store) if result.blocks_resumed == result.blocks_total else None
        if outputs is None:
            outputs = write_slide_outputs(result.store, model_card=card)
        summary["cellularity"] = outputs["cellularity"]
        summary["files"] = outputs["files"]
    return summary


def _check_predict_args(args: argparse.Namespace) -> None:
    """Settings no run can use, refused before any work."""
    import math

    if isinstance(args.mpp, float) and not (math.isfinite(args.mpp) and args.mpp > 0):
        raise CliError(f"--mpp {args.mpp}: microns per pixel must be a positive number (e.g. 0.25 or 0.5)")
    if args.batch_size < 1:
        raise CliError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.level is not None and args.level < 0:
        raise CliError(f"--level {args.level}: levels are numbered from 0")


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.jobs import load_model

    _check_predict_args(args)
    settings = _settings(args)
    source = Path(args.input)
    if not source.exists():
        raise CliError(f"{source}: no such file or folder")
    model, card = load_model(args.model)
    start = time.perf_counter()
    if source.is_dir():
        summary = _predict_folder(args, model, card, settings)
    else:
        summary = _predict_slide(args, model, card, settings)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["model"] = {"name": card.name, "sha256": card.sha256}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['out']} in {summary['seconds']:.1f} s")
    failed = summary.get("failed") or {}
    if failed:
        print(f"error: {len(failed)} of {summary['images']} images failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment a slide (to a zarr store) or a folder of images (to *_pred.png)")
    p.add_argument("input", help="a slide file (.svs, .tif, ...) or a folder of images")
    p.add_argument("--out", required=True, help="output zarr store (slide) or folder (images)")
    p.add_argument("--model", help="checkpoint (.safetensors with its .json card); default: the bundled model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", type=int, default=256, help="window size in px")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument("--block", type=int, default=2048, help="block size in px (multiple of 256)")
    p.add_argument(
        "--opening-radius",
        type=int,
        default=2,
        help="radius (px at the model's resolution) of the morphological opening, 0 = none",
    )
    p.add_argument("--level", type=int, help="pyramid level to segment (default: the one matching the model)")
    p.add_argument(
        "--mpp",
        type=mpp_option,
        help="microns per pixel of level 0, when the file is wrong or silent; 'auto': the file's, or else estimated "
        "from the size of the nuclei",
    )
    p.add_argument("--probabilities", action="store_true", help="also store class probabilities")
    p.add_argument("--no-tissue-skip", action="store_true", help="segment background blocks too")
    p.add_argument("--no-stain-norm", action="store_true", help=_NO_STAIN_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster run)")
    p.add_argument("--fp32", action="store_true", help=_FP32_HELP)
    p.add_argument("--tta", action="store_true", help=_TTA_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    p.add_argument("--no-cells", action="store_true", help="slides: skip the cells CSV, GeoJSON and summary")
    p.add_argument(
        "--scheduler",
        help="run the blocks on dask.distributed: a scheduler ADDRESS, or local:N for N local worker processes "
        "(one per GPU on a GPU machine)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_predict)


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.jobs import default_model_path, load_model
    from .samples import sample_path

    model = default_model_path()
    if model is None:
        raise CliError("the bundled default model is not installed; reinstall napari-histoseg")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    predict = build_parser().parse_args(
        ["predict", str(sample_path()), "--out", str(out / "cmu-1-small-region.zarr"), "--json", "--overwrite"]
        + (["--device", args.device] if args.device else [])
        + (["--no-stain-norm"] if args.no_stain_norm else [])
    )
    summary = _predict_slide(predict, *load_model(model), _settings(predict))
    counts = summary["pixels_per_class"]
    cellularity = summary["cellularity"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"segmented the sample slide CMU-1 small region with the bundled model -> {out}")
    for name, count in counts.items():
        print(f"  {name:15s} {count:>12,d} px")
    ratio = cellularity["cellularity_by_count"]
    text = "n/a" if ratio is None else f"{100 * ratio:.1f}%"
    print(f"tumor cellularity: {text} ({cellularity['tumor_cells']:,} tumor cells of {cellularity['cells']:,} cells)")
    for name, path in summary["files"].items():
        print(f"  {name}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .training.config import TrainConfig
    from .training.train import TrainResult, run_training

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    config = TrainConfig(**values)

    def report(event) -> None:
        from .training.train import EpochEvent, TrainStart

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

    out = Path(config.out).absolute()
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders a run would create
    try:
        result: TrainResult = run_training(config, resume=args.resume, on_event=report)
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
    from .training.config import TrainConfig

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
        help="corrected pairs (reviewed/<name>.png): weight of the term holding the unreviewed pixels at the "
        "starting model's classes (0 = ignore them; docs/fine-tuning.md)",
    )
    pts = p.add_argument_group("point-labelled data (input/<name>.png + points/<name>.csv with y,x,class)")
    pts.add_argument("--points", dest="points_dirs", action="append", metavar="DIR", help="train on it too")
    pts.add_argument("--points-val", metavar="DIR", help="score it at every validation (joins the selection score)")
    pts.add_argument("--points-mpp", type=float, help="um/px of the point folders (default: their points.json)")
    pts.add_argument("--tumor-classes", type=int, nargs="+", help="point classes that are tumor (BRCA-M2C: 2)")
    pts.add_argument("--exclude-sites", nargs="+", metavar="SITE", help="TCGA site codes to keep out of training")
    pts.add_argument(
        "--points-share", type=float, default=defaults.points_share, help="share of patches from point folders"
    )
    pts.add_argument("--teacher", help="checkpoint whose cells the points type (default: --init, else bundled)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)


def _evaluate_points(args: argparse.Namespace, checkpoint) -> int:
    from .engine.infer import InferenceSettings
    from .training.evaluate_points import format_point_result, run_point_evaluation, write_cellularity_plot

    settings = InferenceSettings(
        opening_radius=args.opening_radius,
        stain_normalize=not args.no_stain_norm,
        batch_size=args.batch_size,
        device=args.device,
        amp=not args.fp32,
        test_time_flips=args.tta,
    )
    result = run_point_evaluation(
        args.data_dir,
        checkpoint,
        settings,
        mpp=args.mpp,
        tumor_classes=args.tumor_classes,
        match_um=args.match_um,
        sites=args.sites,
    )
    if args.plot:
        try:
            write_cellularity_plot(result.rows, args.plot, title=f"{Path(args.data_dir).name}: tumor cellularity")
        except ImportError as err:
            print(f"note: no plot written ({err})", file=sys.stderr)
            args.plot = None
    if args.json:
        print(result.to_json())
        return 0
    print(
        f"{len(result.rows)} images of {args.data_dir}, model {checkpoint} ({result.seconds:.1f} s); cells paired "
        f"with points within {result.match_um:g} um"
    )
    print(format_point_result(result))
    if args.plot:
        print(f"cellularity plot: {args.plot}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.jobs import default_model_path
    from .training.evaluate import format_metrics, run_evaluation
    from .training.points import is_point_set

    checkpoint = args.model or default_model_path()
    if checkpoint is None:
        raise SystemExit("error: no --model given and no bundled default model is installed")
    if is_point_set(args.data_dir):
        return _evaluate_points(args, checkpoint)
    result = run_evaluation(
        args.data_dir,
        checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        opening_radius=args.opening_radius,
        stain_normalize=not args.no_stain_norm,
        amp=not args.fp32,
        test_time_flips=args.tta,
    )
    if args.json:
        print(result.to_json())
    else:
        print(f"{result.images} images of {args.data_dir}, model {checkpoint} ({result.seconds:.1f} s)")
        print(format_metrics(result.metrics))
    return 0


def _add_evaluate(sub) -> None:
    from .training.evaluate import DEFAULT_OPENING_RADIUS

    p = sub.add_parser(
        "evaluate", help="score a model on folder pairs (Dice, detection F1, type F1) or on point-labelled folders"
    )
    p.add_argument("data_dir", help="folder with input/ and gt/ (optional inst/), or input/ and points/")
    p.add_argument("--model", help="checkpoint; default: the bundled model")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--opening-radius", type=int, default=DEFAULT_OPENING_RADIUS)
    p.add_argument("--no-stain-norm", action="store_true", help=_NO_STAIN_HELP)
    p.add_argument("--fp32", action="store_true", help=_FP32_HELP)
    p.add_argument("--tta", action="store_true", help=_TTA_HELP)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    pts = p.add_argument_group("point-labelled folders (input/ + points/<name>.csv)")
    pts.add_argument("--mpp", type=float, help="um/px of the images (default: the folder's points.json)")
    pts.add_argument("--tumor-classes", type=int, nargs="+", help="point classes that are tumor (BRCA-M2C: 2)")
    pts.add_argument("--match-um", type=float, default=3.0, help="largest cell-to-point distance that pairs them (um)")
    pts.add_argument("--sites", nargs="+", metavar="SITE", help="score only the images of these TCGA sites")
    pts.add_argument("--plot", metavar="PNG", help="write a scatter plot of per-image tumor cellularity")
    p.set_defaults(func=cmd_evaluate)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...`` with exit status 2, like every other failure."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="histoseg", description="Tumor-cell segmentation of H&E slides (napari-histoseg command line)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    demo = sub.add_parser("demo", help="segment the bundled sample slide with the bundled model")
    demo.add_argument("--out", default="histoseg-demo", help="output folder (default: histoseg-demo)")
    demo.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--no-stain-norm", action="store_true", help=_NO_STAIN_HELP)
    demo.add_argument("--json", action="store_true", help="print the JSON summary")
    demo.set_defaults(func=cmd_demo)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad option (reported in one line, status 2)
        return stop.code if isinstance(stop.code, int) else 2
    tune_cpu_allocator()  # before any thread starts, so that every thread shares the tuned arena
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as err:  # our errors name the file and the problem
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as err:  # a file in the way, a full disk, a setting too large for memory
        print(f"error: {_describe(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished blocks are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
