"""Stitch the CoNSeP training patches back into larger images, for training on random crops with real context.

The shared CoNSeP data holds each 1000x1000 source tile as 16 patches of 256 px: patches 000-008 are a 3x3 grid
without overlap (a 768x768 region), 009-015 are cut elsewhere in the tile. This writes, in the plugin's
folder-pair format, one 768x768 image (and gt mask) per tile from its 3x3 grid, and copies the other patches as
they are, so an epoch still has 16 patch slots per tile. Every seam is checked: a tile whose grid patches do not
continue each other (mean colour step across a seam more than ``--max-seam`` times the step between neighbouring
columns inside the patches) is copied as patches instead, and reported.

Usage: python scripts/stitch_consep.py ../shared/data/consep/train runs/consep-stitched/train
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from skimage.io import imread, imsave

GRID = 3
PATCH_NAME = re.compile(r"^(?P<tile>.+)_(?P<index>\d{3})$")


def seam_ratio(patches: list[np.ndarray]) -> float:
    """Largest seam step of a row-major GRID x GRID patch list, relative to the steps inside the patches."""
    images = [p[..., :3].astype(np.float32) for p in patches]
    inner = np.mean([np.abs(np.diff(im, axis=1)).mean() for im in images])
    worst = 0.0
    for r in range(GRID):
        for c in range(GRID):
            im = images[r * GRID + c]
            if c + 1 < GRID:
                worst = max(worst, float(np.abs(im[:, -1] - images[r * GRID + c + 1][:, 0]).mean()))
            if r + 1 < GRID:
                worst = max(worst, float(np.abs(im[-1] - images[(r + 1) * GRID + c][0]).mean()))
    return worst / max(float(inner), 1e-6)


def stitch(patches: list[np.ndarray]) -> np.ndarray:
    """One image from a row-major GRID x GRID list of equal patches."""
    rows = [np.concatenate(patches[r * GRID : (r + 1) * GRID], axis=1) for r in range(GRID)]
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a CoNSeP split folder with input/ and gt/")
    parser.add_argument("out", type=Path, help="output folder (input/ and gt/ are written)")
    parser.add_argument("--max-seam", type=float, default=2.5)
    args = parser.parse_args()
    tiles: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted((args.source / "input").glob("*.png")):
        match = PATCH_NAME.match(path.stem)
        if match is None:
            raise SystemExit(f"{path}: not a <tile>_<NNN>.png patch name")
        tiles[match["tile"]][int(match["index"])] = path
    for sub in ("input", "gt"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    stitched = 0
    for tile, patches in tiles.items():
        grid = [patches.get(i) for i in range(GRID * GRID)]
        rest = [i for i in patches if i >= GRID * GRID or grid[i] is None]
        if all(grid):
            images = [imread(p) for p in grid]
            ratio = seam_ratio(images)
            if ratio <= args.max_seam:
                masks = [imread(args.source / "gt" / f"{p.stem}_gt.png") for p in grid]
                imsave(args.out / "input" / f"{tile}_grid.png", stitch(images), check_contrast=False)
                imsave(args.out / "gt" / f"{tile}_grid_gt.png", stitch(masks), check_contrast=False)
                stitched += 1
            else:
                print(f"{tile}: seams {ratio:.1f}x the inner step: kept as patches")
                rest = sorted(patches)
        else:
            rest = sorted(patches)
        for i in rest:
            path = patches[i]
            shutil.copyfile(path, args.out / "input" / path.name)
            shutil.copyfile(args.source / "gt" / f"{path.stem}_gt.png", args.out / "gt" / f"{path.stem}_gt.png")
    print(f"{stitched} of {len(tiles)} tiles stitched into {GRID * 256}-px images; written to {args.out}")


if __name__ == "__main__":
    main()
