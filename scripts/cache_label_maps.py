"""Segment the cell typer's training and check images with a model and keep the label maps (for
``train_cell_typer.py --labels`` and ``typer_rules.py``).

    python scripts/cache_label_maps.py --out runs/label_maps

BRCA-M2C at 0.5 um/px, each image stain-normalised on its own (as ``histoseg evaluate`` on points does); CoNSeP at
0.25 um/px, normalised from its folder's pooled colours (as ``histoseg evaluate`` on pairs does). Files are
``<dataset>_<split>_<image>.npy``; existing ones are kept, so a stopped run resumes. Site AC and val come first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import folder_stain_stats, load_model, segment_image
from napari_histoseg.training.image_files import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, card = load_model(args.model)
    settings = InferenceSettings(cell_typer=False)  # the network's own calls: what the typer learns to retype
    jobs = []
    for split in ("val", "train"):
        paths = sorted((args.data / "brca-m2c" / split / "input").glob("*.png"))
        paths.sort(key=lambda p: "TCGA-AC" not in p.name)
        jobs += [(p, 0.5, None) for p in paths]
    for split in ("val", "train"):
        paths = sorted((args.data / "consep" / split / "input").glob("*.png"))
        stain = folder_stain_stats(paths, read_image, card, settings)
        jobs += [(p, 0.25, stain) for p in paths]
    for i, (path, mpp, stain) in enumerate(jobs, start=1):
        dest = args.out / f"{path.parents[2].name}_{path.parents[1].name}_{path.stem}.npy"
        if dest.exists():
            continue
        job = segment_image(read_image(path), model, card, settings, mpp=mpp, stain_source=stain)
        np.save(dest, run(job).labels)
        print(f"{i}/{len(jobs)} {dest.name}", flush=True)


if __name__ == "__main__":
    main()
