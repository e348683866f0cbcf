"""Stain normalisation: what it costs and what it changes, on the bundled model and the bundled CMU-1 sample.

In this one process, alternating the two settings (``--repeats`` times each), the same region of the sample slide
(20x, 0.499 um/px, so the engine upsamples 2x to the model's 0.25 um/px) is segmented with stain normalisation on
and off. Prints seconds per run, the ratio on/off, the normaliser alone on one 2048 px block, and the cells found
each way (their count and how many are tumor).

    python benchmarks/bench_stain.py              # a 1024 px region (~2048 px at the model's resolution)
    python benchmarks/bench_stain.py --size 2048
    python benchmarks/bench_stain.py --mpp 0.25   # as if 40x: no upsampling, the transform's share is largest
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tifffile
import torch

from napari_histoseg.analysis.instances import cells_from_labels
from napari_histoseg.analysis.tissue import image_stain_stats
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.engine.stain_transform import ReinhardNormalizer
from napari_histoseg.samples import sample_path

MPP = 0.499  # the sample's level-0 resolution (its SVS description)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="side of the region, in slide pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mpp", type=float, default=MPP, help="microns per pixel to treat the region as")
    args = parser.parse_args()

    slide = tifffile.imread(sample_path())
    y0, x0 = 600, 900  # epithelium and stroma
    region = np.ascontiguousarray(slide[y0 : y0 + args.size, x0 : x0 + args.size, :3])
    model, card = load_model(None)
    source = image_stain_stats(slide)  # the whole sample's colours, as a slide run measures them
    print(f"model {card.name}, region {region.shape[0]} x {region.shape[1]} px at {args.mpp} um/px on {args.device}")
    print(f"slide LAB mean {np.round(source.mean, 1)}, training LAB mean {np.round(card.stain_stats.mean, 1)}")

    seconds: dict[bool, list[float]] = {True: [], False: []}
    labels: dict[bool, np.ndarray] = {}
    for _ in range(args.repeats):
        for normalize in (True, False):
            settings = InferenceSettings(
                stain_normalize=normalize, device=args.device, skip_background=False, cell_typer=False
            )
            t0 = time.perf_counter()
            result = run(segment_image(region, model, card, settings, mpp=args.mpp, stain_source=source))
            seconds[normalize].append(time.perf_counter() - t0)
            labels[normalize] = result.labels

    block = torch.rand(3, 2048, 2048)
    normalizer = ReinhardNormalizer(source, card.stain_stats)
    normalizer(block[:, :64, :64])
    t0 = time.perf_counter()
    normalizer(block)
    alone = time.perf_counter() - t0

    on, off = min(seconds[True]), min(seconds[False])
    print(f"segment, stain normalisation on : {on:.2f} s (best of {args.repeats})")
    print(f"segment, stain normalisation off: {off:.2f} s")
    print(f"ratio on / off: {on / off:.3f}")
    print(f"normaliser alone, one 2048 x 2048 block: {alone:.3f} s")
    for normalize in (True, False):
        _, classes = cells_from_labels(labels[normalize])
        cells = classes[1:]
        print(
            f"cells with normalisation {'on ' if normalize else 'off'}: {len(cells)} "
            f"({int((cells == 1).sum())} tumor, {int((cells == 2).sum())} non-tumor)"
        )


if __name__ == "__main__":
    main()
