"""Pixel layout and depth, the same wherever pixels are read (slides, the napari reader, image folders, training).

- Planar ("samples first", TIFF planarconfig=separate) RGB is moved to channels last: (3, H, W) -> (H, W, 3).
- 16-bit data are scaled to 8 bits by their real range: a 12-bit camera's values, stored in 16 bits, stop near
  4,095, and dividing them by 257 would make every slide a dark, empty image.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def white_level(max_value: int) -> int:
    """Full scale of integer data whose largest value is ``max_value``: ``2**bits - 1`` for the fewest bits (8 at
    least) that hold it, so 3,999 -> 4,095 (12-bit), 200 -> 255, 60,000 -> 65,535."""
    return (1 << max(8, int(max_value).bit_length())) - 1


def scale_to_uint8(array: Any, white: int) -> Any:
    """Integer data (numpy or dask) with full scale ``white`` as uint8, rounded; values above ``white`` saturate."""
    if white == 255:
        return array.astype(np.uint8) if array.dtype != np.uint8 else array
    scaled = (array.astype(np.uint32) * 255 + white // 2) // white
    return scaled.clip(0, 255).astype(np.uint8)


def channels_last(array: Any) -> Any:
    """(C, H, W) with C in 1..4 and more than 4 columns -> (H, W, C); anything else unchanged."""
    if array.ndim == 3 and array.shape[0] <= 4 and array.shape[-1] > 4:
        return np.moveaxis(array, 0, -1)
    return array
