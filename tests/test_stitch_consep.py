"""scripts/stitch_consep.py: the 3x3 grid of a tile's patches becomes one image; a grid that does not fit stays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.io import imread, imsave

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stitch_consep.py"


def _tile(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random((1000, 1000, 3)), (3, 3, 0))
    image = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    mask = colours[(image[..., 0] // 64).clip(0, 3)]
    return image, mask


def _write_patches(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, order: list[int]) -> None:
    corners = [(r * 256, c * 256) for r in range(3) for c in range(3)]
    corners += [(744, c) for c in (0, 248, 496, 744)] + [(r, 744) for r in (0, 248, 496)]
    for index, source in enumerate(order):
        y, x = corners[source]
        imsave(folder / "input" / f"{name}_{index:03d}.png", image[y : y + 256, x : x + 256], check_contrast=False)
        imsave(folder / "gt" / f"{name}_{index:03d}_gt.png", mask[y : y + 256, x : x + 256], check_contrast=False)


def test_grid_patches_become_one_image_and_a_shuffled_grid_stays_patches(tmp_path):
    source, out = tmp_path / "train", tmp_path / "stitched"
    for sub in ("input", "gt"):
        (source / sub).mkdir(parents=True)
    image, mask = _tile(0)
    _write_patches(source, "train_1", image, mask, list(range(16)))
    shuffled = [4, 1, 2, 3, 0, 5, 6, 7, 8] + list(range(9, 16))
    _write_patches(source, "train_2", *_tile(1), shuffled)

    run = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], capture_output=True, text=True)

    assert run.returncode == 0, run.stderr
    assert "train_2: seams" in run.stdout and "1 of 2 tiles stitched" in run.stdout
    np.testing.assert_array_equal(imread(out / "input" / "train_1_grid.png"), image[:768, :768])
    np.testing.assert_array_equal(imread(out / "gt" / "train_1_grid_gt.png"), mask[:768, :768])
    names = sorted(p.name for p in (out / "input").iterdir())
    expected = ["train_1_grid.png"] + [f"train_1_{i:03d}.png" for i in range(9, 16)]
    assert names == sorted(expected + [f"train_2_{i:03d}.png" for i in range(16)])
    assert sorted(p.name for p in (out / "gt").iterdir()) == sorted(n[:-4] + "_gt.png" for n in names)
