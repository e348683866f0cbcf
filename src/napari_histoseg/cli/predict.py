"""``histoseg predict`` (a slide into a label store and its exports, or a folder of images into masks) and
``histoseg demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..engine.mpp_option import mpp_option
from ..jobs.progress import drive
from .common import NO_STAIN_HELP, CliError, StderrProgress, add_inference_options, settings_of


def _predict_folder(args, model, card, settings) -> dict:
    from ..jobs.folder import predict_folder_job

    job = predict_folder_job(args.input, args.out, model, card, settings, mpp=args.mpp)
    return drive(job, StderrProgress(args.json))


def _predict_slide(args, model, card, settings) -> dict:
    from ..jobs.measure import slide_outputs_job
    from ..jobs.segment import SlideRequest, segment_slide_job

    request = SlideRequest(
        Path(args.input),
        Path(args.out),
        settings,
        checkpoint=args.model,
        level=args.level,
        mpp=args.mpp,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
    )
    outcome = drive(segment_slide_job(request, model, card), StderrProgress(args.json))
    summary = outcome.summary
    summary["out"] = str(args.out)
    if not args.no_cells:
        from ..io.export import exports_whole

        # A rerun that recomputed nothing keeps its exports when they are whole; otherwise they are (re)written.
        outputs = exports_whole(outcome.store) if outcome.resumed_all else None
        if outputs is None:
            outputs = drive(slide_outputs_job(outcome.store, model_card=card))
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
    from ..engine.jobs import load_model

    _check_predict_args(args)
    settings = settings_of(args)
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
    add_inference_options(p, slide_options=True)
    p.add_argument("--level", type=int, help="pyramid level to segment (default: the one matching the model)")
    p.add_argument(
        "--mpp",
        type=mpp_option,
        help="microns per pixel of level 0, when the file is wrong or silent; 'auto': the file's, or else estimated "
        "from the size of the nuclei",
    )
    p.add_argument("--probabilities", action="store_true", help="also store class probabilities")
    p.add_argument(
        "--no-tissue-skip", dest="skip_background", action="store_false", help="segment background blocks too"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster run)")
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
    from ..engine.jobs import default_model_path, load_model
    from ..samples import sample_path

    model = default_model_path()
    if model is None:
        raise CliError("the bundled default model is not installed; reinstall napari-histoseg")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from . import build_parser

    predict = build_parser().parse_args(
        ["predict", str(sample_path()), "--out", str(out / "cmu-1-small-region.zarr"), "--json", "--overwrite"]
        + (["--device", args.device] if args.device else [])
        + ([] if args.stain_normalize else ["--no-stain-norm"])
    )
    summary = _predict_slide(predict, *load_model(model), settings_of(predict))
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


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="segment the bundled sample slide with the bundled model")
    demo.add_argument("--out", default="histoseg-demo", help="output folder (default: histoseg-demo)")
    demo.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--no-stain-norm", dest="stain_normalize", action="store_false", help=NO_STAIN_HELP)
    demo.add_argument("--json", action="store_true", help="print the JSON summary")
    demo.set_defaults(func=cmd_demo)
