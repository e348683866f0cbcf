"""Cellularity in napari: the map as an Image layer with a colour bar, Shapes regions as label-pixel polygons.

Thin: the numbers come from :mod:`napari_histoseg.analysis.cellularity`; this module only converts between napari layers
(world coordinates, usually microns) and the label map's pixel frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes

from napari_histoseg.analysis.cellularity import CellularityGrid, cellularity_readout
from napari_histoseg.units import is_micron

COLORMAP = "magma"
_ELLIPSE_VERTICES = 64


def cellularity_image(
    grid: CellularityGrid,
    labels_layer: Labels | None = None,
    *,
    by: str = "count",
    name: str = "tumor cellularity",
) -> Image:
    """An Image layer of ``grid``'s cellularity (0..1, NaN where no cells) over the labels it was measured on.

    A grid square covers ``grid.cell`` label pixels, so the layer's scale is the labels layer's times that, and
    its translate puts square (0, 0) over label pixels [0, cell): it lines up with the labels and the slide.
    The colour bar is switched on; squares without cells are NaN (left out of the map's meaning).
    """
    data = grid.by_count() if by == "count" else grid.by_area()
    scale = np.ones(2)
    translate = np.zeros(2)
    units = None
    if labels_layer is not None:
        scale = np.asarray(labels_layer.scale[-2:], float)
        translate = np.asarray(labels_layer.translate[-2:], float)
        units = tuple(labels_layer.units[-2:])
    cell = grid.cell
    layer = Image(
        data,
        name=f"{name} (by {by})",
        colormap=COLORMAP,
        contrast_limits=(0.0, 1.0),
        opacity=0.6,
        scale=tuple(scale * cell),
        translate=tuple(translate + scale * (cell - 1) / 2),
        metadata={"cellularity_by": by, "grid_cell_px": cell, "legend": "tumor cells / all cells per square"},
        **({"units": units} if units else {}),
    )
    layer.colorbar.visible = True
    return layer


def shapes_to_regions(shapes: Shapes, labels: Labels) -> list[np.ndarray]:
    """Each polygon, rectangle or ellipse of ``shapes`` as (K, 2) (y, x) vertices in ``labels``' level-0 pixels.

    Lines and paths enclose nothing and are skipped.
    """
    regions = []
    for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
        vertices = np.asarray(vertices, float)[:, -2:]
        if kind in ("line", "path"):
            continue
        if kind == "ellipse":
            vertices = _ellipse_polygon(vertices)
        world = np.array([shapes.data_to_world(v) for v in vertices])[:, -2:]
        data = np.array([labels.world_to_data(np.r_[np.zeros(labels.ndim - 2), w]) for w in world])[:, -2:]
        regions.append(data)
    return regions


def _ellipse_polygon(corners: np.ndarray) -> np.ndarray:
    """A polygon through an ellipse given, as napari stores it, by the four corners of its bounding box."""
    centre = corners.mean(0)
    a, b = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, _ELLIPSE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def labels_mpp(labels: Labels) -> float | None:
    """Microns per level-0 label pixel when the layer's units are microns."""
    unit = str(labels.units[-1]) if labels.units else ""
    return float(labels.scale[-1]) if is_micron(unit) else None


def layer_readout(labels: Labels, shapes: Shapes | None = None, *, table: Any = None, **cell_kwargs) -> dict:
    """Cellularity of a Labels layer's result and of each region of a Shapes layer (see ``cellularity_readout``).

    ``table``: cells already extracted from these labels (skips the extraction). Run it off the GUI thread for a
    slide: the extraction reads the whole level 0 block by block.
    """
    data = labels.data
    source = table if table is not None else (list(data) if labels.multiscale else data)
    regions = shapes_to_regions(shapes, labels) if shapes is not None and len(shapes.data) else []
    return cellularity_readout(source, regions, mpp=labels_mpp(labels), **cell_kwargs)
