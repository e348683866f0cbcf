"""Reading the files of a training pair: images as RGB uint8, colour masks as class labels, instance maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classes import CLASS_COLORS, CLASS_NAMES
from ..pixels import channels_last, scale_to_uint8, white_level
from .pair_folders import DatasetError

_TIFF = (".tif", ".tiff")
# Offending colours listed in an error message, per file (the most frequent first).
_MAX_COLOURS_REPORTED = 5
# More distinct wrong colours than this in one mask: hint that it was saved lossily.
_LOSSY_HINT_COLOURS = 10


def read_array(path: Path) -> np.ndarray:
    """Decode a file as a numpy array, or raise DatasetError naming it."""
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        # Pillow directly: letting imageio try every plugin on a corrupt file is slow and noisy.
        return np.asarray(iio.imread(path, plugin="pillow"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as exc:  # decoders raise many unrelated types for a corrupt file
        raise DatasetError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # by its real range: 12-bit data in 16 bits stop near 4,095 (pixels.py)
        return scale_to_uint8(array, white_level(array.max(initial=0)))
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
    raise DatasetError(f"{path}: unsupported pixel type {array.dtype} (use 8- or 16-bit images)")


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4), planar (1|2|3|4, H, W) -> (H, W, 3); alpha is dropped, grey repeated."""
    array = channels_last(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise DatasetError(f"{path}: expected a 2-D RGB, RGBA or grey image, got an array of shape {array.shape}")
    channels = array.shape[-1]
    if channels <= 2:  # grey or grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8: RGBA drops alpha, grey becomes RGB, 16-bit is scaled to 8-bit."""
    path = Path(path)
    array = read_array(path)
    return _to_rgb(_to_uint8(array, path), path)


def read_mask(path: str | Path, *, tolerance: int = 60) -> tuple[np.ndarray, int]:
    """Read a colour-coded mask as class labels (H, W) uint8 and the number of pixels snapped.

    A pixel whose colour differs from a class colour by at most ``tolerance`` in every channel (Chebyshev
    distance) is snapped to that class, which absorbs JPEG-like noise; other colours raise a
    :class:`DatasetError` naming the file, each offending colour (most frequent first) and its pixel count.
    """
    path = Path(path)
    if not 0 <= tolerance < 128:
        raise ValueError(f"tolerance must be in 0..127 so that class colours stay distinct, got {tolerance}")
    rgb = _to_rgb(_to_uint8(read_array(path), path), path)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    unique_rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.int16)
    distance = np.abs(unique_rgb[:, None, :] - CLASS_COLORS[None].astype(np.int16)).max(axis=-1)
    nearest = distance.argmin(axis=1)
    nearest_distance = distance[np.arange(len(colours)), nearest]
    bad = nearest_distance > tolerance
    if bad.any():
        order = np.argsort(-counts[bad], kind="stable")[:_MAX_COLOURS_REPORTED]
        bad_rgb, bad_counts = unique_rgb[bad][order], counts[bad][order]
        listed = ", ".join(f"{list(map(int, c))} ({int(n)} px)" for c, n in zip(bad_rgb, bad_counts, strict=True))
        more = int(bad.sum()) - len(order)
        suffix = f" and {more} more colour(s)" if more > 0 else ""
        if int(bad.sum()) > _LOSSY_HINT_COLOURS:
            suffix += " (so many colours suggest lossy compression such as JPEG: save masks as PNG)"
        raise DatasetError(
            f"{path}: {int(counts[bad].sum())} pixel(s) have colours that are not a class colour "
            f"(tolerance {tolerance}): {listed}{suffix}; allowed: "
            + ", ".join(f"{name} {list(map(int, c))}" for name, c in zip(CLASS_NAMES, CLASS_COLORS, strict=True))
        )
    snapped = int(counts[nearest_distance > 0].sum())
    labels = nearest.astype(np.uint8)[inverse].reshape(rgb.shape[:2])
    return labels, snapped


def read_instances(path: str | Path) -> np.ndarray:
    """Read an instance map (H, W) as int32 (0 = background)."""
    path = Path(path)
    array = read_array(path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(
            f"{path}: an instance map must be a single-channel integer image, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int32)
