"""npe2 reader: open a whole-slide TIFF as one lazy multiscale RGB image layer."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from napari_histoseg.io.slide import Slide, SlideError, UnsupportedSlideError, is_tiff, open_slide

logger = logging.getLogger(__name__)

__all__ = ["get_reader", "slide_layer_data"]

SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".ndpi")  # .ome.tif(f) end in .tif(f)

LayerData = tuple[Any, dict, str]
ReaderFunction = Callable[[str], list[LayerData]]


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader for a single slide file, or ``None`` when the file is not one this plugin can open.

    Files with a slide suffix that are not TIFFs (or are empty) and TIFFs that are not RGB slides
    (fluorescence, 16-bit greyscale...) get ``None`` so another reader may take them. A TIFF that is
    corrupt or truncated is claimed: its reader raises a :class:`SlideError` naming the file, which napari
    reports to the user (napari keeps running).
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    if not path.lower().endswith(SUFFIXES) or not os.path.isfile(path):
        return None
    if os.path.getsize(path) == 0 or not is_tiff(path):
        return None
    try:
        slide = open_slide(path)
    except UnsupportedSlideError as exc:
        logger.info("napari-histoseg does not open %s: %s", path, exc)
        return None
    except SlideError as exc:
        return _failing_reader(exc)

    def read_slide(_path: str) -> list[LayerData]:
        return slide_layer_data(slide)

    return read_slide


def _failing_reader(error: SlideError) -> ReaderFunction:
    def read_slide(_path: str) -> list[LayerData]:
        raise error

    return read_slide


def slide_layer_data(slide: Slide) -> list[LayerData]:
    """One multiscale RGB image layer: the dask levels, scale in microns when known, slide metadata."""
    meta: dict[str, Any] = {
        "name": _layer_name(slide.path),
        "multiscale": True,
        "rgb": True,
        # Given, so napari does not compute a data range from the pixels while opening.
        "contrast_limits": [0, 255],
        "metadata": {**slide.metadata, "level_mpp": list(slide.mpp)},
    }
    mpp_x = slide.mpp[0]
    if mpp_x is not None:
        mpp_y = slide.metadata.get("mpp_y") or mpp_x
        meta["scale"] = (mpp_y, mpp_x)
        if _image_accepts_units():
            meta["units"] = ("um", "um")
    return [(list(slide.levels), meta, "image")]


def _layer_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@lru_cache(maxsize=1)
def _image_accepts_units() -> bool:
    """napari >= 0.6 layers take ``units``; read the version without importing napari (slow) here."""
    try:
        major, minor = (int(part) for part in version("napari").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 6)
