"""npe2 writer: save a class-label Labels layer as OME-Zarr (``.zarr``) or as a tiled pyramidal TIFF (``.tif``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_histoseg.io.export import write_labels_ome_zarr, write_labels_tiff
from napari_histoseg.units import is_micron

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")


def layer_mpp(attributes: dict) -> float | None:
    """Microns per level-0 pixel of a layer, when its scale is in microns."""
    units = attributes.get("units") or ()
    scale = attributes.get("scale") or ()
    if len(scale) >= 1 and units and is_micron(units[-1]):
        return float(scale[-1])
    return None


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one Labels layer (in-memory, lazy, or multiscale) and return the path written.

    The suffix picks the format: ``.zarr`` -> OME-Zarr label image (replacing an existing one: napari's save
    dialog has already asked), ``.tif``/``.tiff`` -> tiled pyramidal TIFF; no suffix -> ``.zarr``.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in ZARR_SUFFIXES + TIFF_SUFFIXES:
        target = target.with_name(target.name + ".zarr")
        suffix = ".zarr"
    source = list(data) if attributes.get("multiscale") else data
    mpp = layer_mpp(attributes)
    if suffix in ZARR_SUFFIXES:
        write_labels_ome_zarr(source, target, mpp=mpp, overwrite=True)
    else:
        write_labels_tiff(source, target, mpp=mpp)
    return [str(target)]
