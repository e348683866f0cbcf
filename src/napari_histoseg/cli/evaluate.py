"""``histoseg evaluate``: folder pairs scored exactly as ``histoseg predict`` segments them
(:mod:`napari_histoseg.jobs.evaluate`), or point-labelled folders (``training.evaluate_points``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..jobs.progress import drive
from .common import CliError, add_inference_options, settings_of


def _evaluate_points(args: argparse.Namespace, checkpoint) -> int:
    from ..training.evaluate_points import format_point_result, run_point_evaluation, write_cellularity_plot

    result = run_point_evaluation(
        args.data_dir,
        checkpoint,
        settings_of(args),
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
    from ..engine.jobs import default_model_path
    from ..jobs.evaluate import evaluate_folder_job
    from ..training.evaluate import format_metrics
    from ..training.points import is_point_set

    checkpoint = args.model or default_model_path()
    if checkpoint is None:
        raise CliError("no --model given and no bundled default model is installed")
    if is_point_set(args.data_dir):
        return _evaluate_points(args, checkpoint)
    result = drive(evaluate_folder_job(args.data_dir, checkpoint, settings_of(args)))
    if args.json:
        print(result.to_json())
    else:
        print(f"{result.images} images of {args.data_dir}, model {checkpoint} ({result.seconds:.1f} s)")
        print(format_metrics(result.metrics))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on folder pairs (Dice, detection F1, type F1) or on point-labelled folders; folder "
        "pairs are segmented exactly as 'histoseg predict DIR/input' segments them",
    )
    p.add_argument("data_dir", help="folder with input/ and gt/ (optional inst/), or input/ and points/")
    p.add_argument("--model", help="checkpoint; default: the bundled model")
    add_inference_options(p, slide_options=True)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    pts = p.add_argument_group("point-labelled folders (input/ + points/<name>.csv)")
    pts.add_argument("--mpp", type=float, help="um/px of the images (default: the folder's points.json)")
    pts.add_argument("--tumor-classes", type=int, nargs="+", help="point classes that are tumor (BRCA-M2C: 2)")
    pts.add_argument("--match-um", type=float, default=3.0, help="largest cell-to-point distance that pairs them (um)")
    pts.add_argument("--sites", nargs="+", metavar="SITE", help="score only the images of these TCGA sites")
    pts.add_argument("--plot", metavar="PNG", help="write a scatter plot of per-image tumor cellularity")
    p.set_defaults(func=cmd_evaluate)
