"""What a slide file says about itself: microns per pixel, magnification, format and vendor (Aperio, OME, TIFF tags)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import tifffile

from ..units import UM_PER_UNIT

#: Microns per pixel outside this range is taken as a meaningless default (e.g. 72 dpi) and ignored.
PLAUSIBLE_MPP = (0.01, 100.0)


def svs_metadata(tif: tifffile.TiffFile) -> dict[str, Any]:
    from tifffile.tifffile import svs_description_metadata

    try:
        return svs_description_metadata(tif.pages.first.description)
    except ValueError:
        return {}


def level0_mpp(
    tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, series_index: int
) -> tuple[float | None, float | None, str | None]:
    """Level-0 microns per pixel (x, y) and where it came from: Aperio MPP, OME PhysicalSize, TIFF tags."""
    if tif.is_svs:
        value = svs_metadata(tif).get("MPP")
        if isinstance(value, (int, float)) and _plausible(value):
            return float(value), float(value), "aperio"
    if tif.is_ome:
        found = _ome_physical_size(tif, series_index)
        if found is not None:
            return found[0], found[1], "ome"
    page = series.keyframe
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.resolution
    except (AttributeError, TypeError, ValueError):
        return None, None, None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # RESUNIT INCH / CENTIMETER
    if um_per_unit is None or not xres or not yres:
        return None, None, None
    mpp_x, mpp_y = um_per_unit / xres, um_per_unit / yres
    if _plausible(mpp_x) and _plausible(mpp_y):
        return mpp_x, mpp_y, "tiff-resolution"
    return None, None, None


def _plausible(mpp: float) -> bool:
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _ome_pixels(tif: tifffile.TiffFile, series_index: int) -> ET.Element | None:
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    if not images:
        return None
    image = images[min(series_index, len(images) - 1)]
    return next((el for el in image if el.tag.endswith("Pixels")), None)


def _ome_physical_size(tif: tifffile.TiffFile, series_index: int) -> tuple[float, float] | None:
    pixels = _ome_pixels(tif, series_index)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        factor = UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or factor is None:
            return None
        sizes.append(float(value) * factor)
    return (sizes[0], sizes[1]) if all(_plausible(s) for s in sizes) else None


def ome_channel_names(tif: tifffile.TiffFile) -> list[str]:
    if not tif.is_ome:
        return []
    pixels = _ome_pixels(tif, 0)
    if pixels is None:
        return []
    return [el.get("Name") for el in pixels if el.tag.endswith("Channel") and el.get("Name")]


def magnification(tif: tifffile.TiffFile, series_index: int) -> float | None:
    if tif.is_svs:
        value = svs_metadata(tif).get("AppMag")
        return float(value) if isinstance(value, (int, float)) else None
    if tif.is_ndpi:
        value = (tif.pages.first.ndpi_tags or {}).get("Magnification")
        return float(value) if isinstance(value, (int, float)) else None
    if tif.is_ome:
        try:
            root = ET.fromstring(tif.ome_metadata or "")
        except ET.ParseError:
            return None
        for el in root.iter():
            if el.tag.endswith("Objective") and el.get("NominalMagnification"):
                return float(el.get("NominalMagnification"))
    return None


def format_name(tif: tifffile.TiffFile) -> str:
    for flag, label in (("is_svs", "aperio-svs"), ("is_ndpi", "hamamatsu-ndpi"), ("is_ome", "ome-tiff")):
        if getattr(tif, flag):
            return label
    return "bigtiff" if tif.is_bigtiff else "tiff"


def vendor(tif: tifffile.TiffFile) -> str | None:
    if tif.is_svs:
        return "aperio"
    if tif.is_ndpi:
        return "hamamatsu"
    return None


def jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in values.items() if isinstance(v, (str, int, float, bool)) or v is None}
