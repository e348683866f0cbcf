"""Benchmark of training: samples per second of the training loop, of the data loader alone, and one validation.

Usage (from the repository root)::

    python benchmarks/bench_train.py [--data ../shared/data/consep/train] [--val ../shared/data/consep/val]
        [--width 1.0] [--batch-size 8] [--steps 12] [--device auto] [--workers N] [--json]

The training rate is measured by the real loop (``training.train``) from the third step on (the first steps pay
for allocation and warm-up); the loader rate by iterating the same ``PatchDataset``/``make_loader`` with no model;
the validation time is that of the epoch the run ends with (whole images, metrics included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.patch_datasets import PatchDataset, default_num_workers, make_loader
from napari_histoseg.training.samples import load_pairs
from napari_histoseg.training.train import EpochEvent, StepEvent, TrainConfig, TrainStart, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep"


def loader_rate(data: Path, batch_size: int, patch: int, workers: int, batches: int) -> float:
    """Samples per second of the training data loader alone (augmentation included, no model)."""
    samples, _ = load_pairs(find_pairs(data))
    dataset = PatchDataset(samples, patch=patch, samples_per_epoch=batch_size * (batches + 2), seed=0)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, seed=0)
    iterator = iter(loader)
    for _ in range(2):  # start the workers
        next(iterator)
    t0 = time.perf_counter()
    n = 0
    for images, _labels in iterator:
        n += len(images)
    return n / (time.perf_counter() - t0)


def train_rate(args: argparse.Namespace, workers: int) -> dict:
    """Training samples per second (steps 3..N) and the validation time, from the real training loop."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            train_dir=str(args.data),
            val_dir=str(args.val) if args.val else None,
            out=out,
            epochs=1,
            batch_size=args.batch_size,
            patch=args.patch,
            width=args.width,
            samples_per_epoch=args.batch_size * args.steps,
            max_steps=args.steps,
            device=args.device,
            num_workers=workers,
        )
        times, start, epoch = [], None, None
        for event in train(config):
            if isinstance(event, TrainStart):
                start = event
            elif isinstance(event, StepEvent):
                times.append(time.perf_counter())
            elif isinstance(event, EpochEvent):
                epoch = event
    rate = args.batch_size * (len(times) - 3) / (times[-1] - times[2]) if len(times) > 3 else float("nan")
    return {
        "device": start.device,
        "parameters": start.parameters,
        "train_samples_per_s": rate,
        "validation_s": epoch.validation_seconds,
        "validation_images": start.val_images,
        "validation_images_per_s": start.val_images / epoch.validation_seconds,
        "val_metrics_untrained": {k: epoch.val[k] for k in ("mean_f1", "detection_f1")},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "train")
    parser.add_argument("--val", type=Path, default=SHARED / "val")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"training data not found: {args.data}")
    workers = default_num_workers() if args.workers is None else args.workers
    result = {
        "data": str(args.data),
        "width": args.width,
        "batch_size": args.batch_size,
        "patch": args.patch,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
    }
    result["loader_samples_per_s"] = loader_rate(args.data, args.batch_size, args.patch, workers, args.loader_batches)
    result.update(train_rate(args, workers))
    result["loader_to_train_ratio"] = result["loader_samples_per_s"] / result["train_samples_per_s"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
