"""Block and window grids for whole-slide inference.

Two levels of tiling:

* **blocks** of a few thousand pixels, aligned to the output chunk grid, are the unit of reading, writing,
  resuming and distribution;
* **windows** of ``tile`` pixels (256 by default) are what the network sees. Windows sit on one *global* lattice
  (stride ``tile * (1 - overlap)``), so a block computes exactly the windows that touch its core (plus the opening
  halo) and the blended result inside the core is the same whatever the block size: no seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowGrid:
    """The global window lattice: windows of ``tile`` px every ``stride`` px along each axis.

    As in MONAI's sliding window, the last window of an axis is moved back to end at the image border, so the image
    is covered by the fewest windows and none hangs over the edge (an axis shorter than a tile gets one window,
    padded).
    """

    tile: int
    stride: int

    @classmethod
    def from_overlap(cls, tile: int, overlap: float) -> WindowGrid:
        """Windows of ``tile`` px overlapping by the fraction ``overlap`` (0 <= overlap < 1)."""
        if tile < 16:
            raise ValueError(f"tile must be at least 16 px, got {tile}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        return cls(tile=tile, stride=max(1, int(round(tile * (1.0 - overlap)))))

    def positions(self, length: int) -> np.ndarray:
        """Start positions of all windows along an axis of ``length`` px."""
        if length <= self.tile:
            return np.zeros(1, dtype=np.int64)
        return np.append(np.arange(0, length - self.tile, self.stride), length - self.tile)

    def starts(self, lo: int, hi: int, length: int) -> np.ndarray:
        """Start positions of the windows (on an axis of ``length`` px) that intersect ``[lo, hi)``."""
        p = self.positions(length)
        return p[(p < hi) & (p + self.tile > lo)]


@dataclass(frozen=True)
class Block:
    """One block: its index, its core (what it writes) and the region it must read (windows touching the core)."""

    index: tuple[int, int]
    core: tuple[int, int, int, int]  # y0, x0, y1, x1 in output pixels, clipped to the image
    read: tuple[int, int, int, int]  # y0, x0, y1, x1: union of the windows it runs; may extend beyond the image
    window_starts: tuple[np.ndarray, np.ndarray]  # window start positions (y, x) relative to ``read``

    @property
    def n_windows(self) -> int:
        return len(self.window_starts[0]) * len(self.window_starts[1])


def block_grid(shape: tuple[int, int], block: int) -> tuple[int, int]:
    """Number of blocks along (y, x) for an image of ``shape``."""
    return math.ceil(shape[0] / block), math.ceil(shape[1] / block)


def make_block(index: tuple[int, int], shape: tuple[int, int], block: int, grid: WindowGrid, halo: int = 0) -> Block:
    """The block at ``index``: its core, and the windows that touch the core grown by ``halo`` (opening)."""
    by, bx = index
    y0, x0 = by * block, bx * block
    y1, x1 = min(y0 + block, shape[0]), min(x0 + block, shape[1])
    if y0 >= shape[0] or x0 >= shape[1]:
        raise IndexError(f"block {index} lies outside an image of shape {shape}")
    # The opening needs labels ``halo`` px around the core, but only inside the image.
    ny0, nx0 = max(0, y0 - halo), max(0, x0 - halo)
    ny1, nx1 = min(shape[0], y1 + halo), min(shape[1], x1 + halo)
    ys, xs = grid.starts(ny0, ny1, shape[0]), grid.starts(nx0, nx1, shape[1])
    read = (int(ys[0]), int(xs[0]), int(ys[-1]) + grid.tile, int(xs[-1]) + grid.tile)
    return Block(index=index, core=(y0, x0, y1, x1), read=read, window_starts=(ys - read[0], xs - read[1]))


def gaussian_weight(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Smooth blending weight of a window (as MONAI's ``gaussian`` mode), float32, strictly positive."""
    sigma = sigma_scale * tile
    centre = (tile - 1) / 2.0
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    weight = np.outer(axis, axis).astype(np.float32)
    weight /= weight.max()
    return np.maximum(weight, 1e-6).astype(np.float32)
