"""Tissue mask from a low-resolution level, and the tissue fraction of level-0 boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _pyramids import real_tissue, write_pyramid
from napari_histoseg.analysis.tissue import tissue_fraction, tissue_mask
from napari_histoseg.io.slide import open_slide


def _disk_slide(tmp_path: Path, size: int = 1600, radius: int = 500, specks: bool = False) -> tuple[Path, np.ndarray]:
    """White glass with a disk of real tissue (and optionally dust specks); returns path and true mask."""
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < radius**2
    image = np.full((size, size, 3), 242, np.uint8)
    patch = real_tissue(400, 400, y=1700, x=1080)  # epidermis: tissue everywhere
    image[disk] = np.tile(patch, (size // 400 + 1, size // 400 + 1, 1))[:size, :size][disk]
    if specks:
        for y, x in [(100, 100), (150, 1400), (1450, 200)]:
            image[y : y + 6, x : x + 6] = (120, 40, 120)
    return write_pyramid(tmp_path / "disk.tif", image, 1, compression="zlib"), disk


def test_mask_matches_tissue_disk_and_drops_dust(tmp_path) -> None:
    path, disk = _disk_slide(tmp_path, specks=True)
    with open_slide(path) as slide:
        mask, downsample = tissue_mask(slide, max_size=1000)  # single level: uses the built 800 px level
    assert mask.dtype == bool and mask.shape == (800, 800) and downsample == 2.0
    truth = disk[::2, ::2]
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    for y, x in [(100, 100), (150, 1400), (1450, 200)]:
        assert not mask[y // 2 - 5 : y // 2 + 8, x // 2 - 5 : x // 2 + 8].any()


def test_max_size_picks_the_largest_level_that_fits(tmp_path) -> None:
    path, _ = _disk_slide(tmp_path)
    with open_slide(path) as slide:
        assert tissue_mask(slide)[0].shape == (1600, 1600)  # default max_size 2048: level 0 fits
        mask, downsample = tissue_mask(slide, max_size=512)  # none fits: the smallest level
        assert downsample == 2.0 and mask.shape == (800, 800)
        with pytest.raises(ValueError, match="max_size"):
            tissue_mask(slide, max_size=8)


def test_blank_glass_has_no_tissue(tmp_path) -> None:
    rng = np.random.default_rng(0)
    glass = (240 + rng.integers(-3, 4, size=(600, 600, 3))).astype(np.uint8)
    with open_slide(write_pyramid(tmp_path / "glass.tif", glass, 1, compression="zlib")) as slide:
        mask, _ = tissue_mask(slide)
    assert mask.mean() < 0.01


def test_all_tissue_is_not_split_in_two(tmp_path) -> None:
    image = real_tissue(400, 400, y=1700, x=1080)  # epidermis, no glass
    with open_slide(write_pyramid(tmp_path / "full.tif", image, 1, compression="zlib")) as slide:
        mask, _ = tissue_mask(slide)
    assert mask.mean() > 0.9


@pytest.mark.slow
def test_real_slides(cmu_svs: Path, tcga_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        mask, downsample = tissue_mask(slide)
    assert downsample == 2.0 and mask.shape == (1483, 1110)
    assert 0.2 < mask.mean() < 0.6
    assert not mask[100:300, 100:300].any()  # glass at top left
    assert mask[1100:1400, 300:600].mean() > 0.9  # epidermis and dermis near the bottom
    with open_slide(tcga_svs) as slide:
        mask, downsample = tissue_mask(slide)
    assert downsample == pytest.approx(4.0, rel=0.01)
    assert 0.45 < mask.mean() < 0.8
    assert not mask[:30, :100].any()  # glass corner


def test_tissue_fraction_of_level0_boxes() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True
    assert tissue_fraction(mask, 4.0, 8, 8, 16, 16) == 1.0
    assert tissue_fraction(mask, 4.0, 0, 0, 8, 8) == 0.0
    assert tissue_fraction(mask, 4.0, 0, 0, 16, 16) == pytest.approx(4 / 16)
    assert tissue_fraction(mask, 4.0, 20, 20, 8, 8) == pytest.approx(0.25)  # pixels (5,5),(5,6),(6,5),(6,6)
    # Partly outside the slide: outside counts as background.
    assert tissue_fraction(mask, 4.0, -16, -16, 32, 32) == pytest.approx(4 / 64)
    assert tissue_fraction(mask, 4.0, -8, 8, 16, 16) == pytest.approx(0.0)
    assert tissue_fraction(mask, 1.0, 1000, 1000, 5, 5) == 0.0
    with pytest.raises(ValueError, match="positive"):
        tissue_fraction(mask, 4.0, 0, 0, 0, 4)
