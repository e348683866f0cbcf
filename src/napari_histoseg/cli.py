"""The ``histoseg`` command: the same jobs as the napari widgets, from a shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".ndpi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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


def _settings(args: argparse.Namespace):
    from .engine.infer import InferenceSettings

    return InferenceSettings(
        tile=args.tile,
        overlap=args.overlap,
        block=args.block,
        opening_radius=args.opening_radius,
        skip_background=not args.no_tissue_skip,
        probabilities=args.probabilities,
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
    )


def _predict_folder(args, model, card, settings) -> dict:
    from .classes import labels_to_rgb
    from .engine.infer import run
    from .engine.jobs import segment_image
    from .training.data import read_image

    images = sorted(p for p in Path(args.input).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"error: {args.input}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    totals = [0, 0, 0, 0]
    per_image = {}
    for path in images:
        result = run(segment_image(read_image(path), model, card, settings, name=path.name))
        imsave(out / f"{path.stem}_pred.png", labels_to_rgb(result.labels), check_contrast=False)
        per_image[path.name] = result.class_counts
        totals = [a + b for a, b in zip(totals, result.class_counts, strict=True)]
    return {"images": len(images), "pixels_per_class_total": totals, "per_image": per_image, "out": str(out)}


def _predict_slide(args, model, card, settings) -> dict:
    from .engine.infer import run
    from .engine.jobs import segment_slide
    from .io.slide import open_slide

    options = {"level": args.level, "input_mpp": args.mpp, "overwrite": args.overwrite}
    with open_slide(args.input) as slide:
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
    return summary


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.jobs import load_model

    model, card = load_model(args.model)
    settings = _settings(args)
    start = time.perf_counter()
    source = Path(args.input)
    if source.is_dir():
        summary = _predict_folder(args, model, card, settings)
    elif source.is_file():
        summary = _predict_slide(args, model, card, settings)
    else:
        raise SystemExit(f"error: {source}: no such file or folder")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["model"] = {"name": card.name, "sha256": card.sha256}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['out']} in {summary['seconds']:.1f} s")
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
    p.add_argument("--opening-radius", type=int, default=2, help="radius of the morphological opening, 0 = none")
    p.add_argument("--level", type=int, help="pyramid level to segment (default: the one matching the model)")
    p.add_argument("--mpp", type=float, help="microns per pixel of level 0, when the file is wrong or silent")
    p.add_argument("--probabilities", action="store_true", help="also store class probabilities")
    p.add_argument("--no-tissue-skip", action="store_true", help="segment background blocks too")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    p.add_argument(
        "--scheduler",
        help="run the blocks on dask.distributed: a scheduler ADDRESS, or local:N for N local worker processes "
        "(one per GPU on a GPU machine)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoseg", description="Tumor-cell segmentation of H&E slides (napari-histoseg command line)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as err:  # our errors name the file and the problem
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished blocks are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
