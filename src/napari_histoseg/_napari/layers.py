"""Turn segmentation results into napari Labels layers, and napari geometry (view, shapes) into image regions.

A slide result is shown lazily from its zarr store: one zarr array per pyramid level, read chunk by chunk as
napari draws (zarr arrays rather than dask, so a refresh shows blocks written since, with no stale dask cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.colormaps import DirectLabelColormap

from napari_histoseg.classes import CLASS_NAMES, NUM_CLASSES, napari_colors
from napari_histoseg.io.store import LabelStore

Box = tuple[int, int, int, int]  # level-0 pixels of the image layer: y0, x0, y1, x1
SOURCE_KEY = "histoseg_source"  # Labels metadata: name of the image layer it segments
VIEW_KEY = "histoseg_view"  # Labels metadata of a slide's view result: {"level": k, "origin": [y0, x0]} (level px)
OUTLINE_PX = 1  # contour width of the "outlines" display


class RegionError(ValueError):
    """A region to segment that does not exist or misses the image."""


def class_colormap() -> DirectLabelColormap:
    """Red tumor, green non-tumor, blue boundary; background transparent."""
    return DirectLabelColormap(color_dict=napari_colors())


def class_features() -> dict[str, list]:
    """The Labels layer's features: a class name per label value, so hovering shows "tumor cell"."""
    return {"index": list(range(NUM_CLASSES)), "class": list(CLASS_NAMES)}


def counts_dict(counts: Sequence[int]) -> dict[str, int]:
    """Class pixel counts by class name."""
    return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=False)}


def array_counts(labels: np.ndarray) -> list[int]:
    """Pixels per class of an in-memory label array."""
    return np.bincount(np.asarray(labels).ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES].tolist()


def store_counts(store: LabelStore) -> list[int]:
    """Pixels per class over the finished blocks of a store (a cancelled run counts what was done)."""
    total = np.zeros(NUM_CLASSES, np.int64)
    for counts in store.done_blocks().values():
        total += np.asarray(counts[:NUM_CLASSES], np.int64)
    return total.tolist()


def _geometry(image: Image, downsample: float = 1.0) -> dict:
    scale = np.asarray(image.scale[-2:], float)
    translate = np.asarray(image.translate[-2:], float)
    # A label pixel of a downsampled grid covers `downsample` image pixels: its centre sits half-way across them.
    return {
        "scale": tuple(scale * downsample),
        "translate": tuple(translate + scale * (downsample - 1) / 2),
        "units": tuple(image.units[-2:]),
    }


def view_geometry(image: Image, origin: Sequence[int], downsample: float) -> dict:
    """Labels keyword arguments that put a crop of a pyramid level (``downsample`` level-0 px per px) starting at
    ``origin`` (level px) over ``image``."""
    geometry = _geometry(image, downsample)
    scale = np.asarray(image.scale[-2:], float)
    geometry["translate"] = tuple(np.asarray(geometry["translate"]) + scale * downsample * np.asarray(origin, float))
    return geometry


def store_layer_data(store: LabelStore, image: Image) -> tuple[list, dict]:
    """Multiscale data (zarr levels) and Labels keyword arguments for a slide result shown over ``image``."""
    downsample = float(store.info.get("downsample", 1.0))
    kwargs = {**_geometry(image, downsample), "multiscale": len(store.levels) > 1}
    data = list(store.levels) if len(store.levels) > 1 else store.levels[0]
    return data, kwargs


def find_result_layer(viewer, image: Image, *, view: bool = False) -> Labels | None:
    """The Labels layer holding an earlier result for ``image``, if any; never one the user has edited (its
    corrections are kept: a new result goes to a new layer). ``view``: an earlier view result of a slide (a view
    and the slide's whole result never replace each other)."""
    from .edits import was_edited

    for layer in reversed(viewer.layers):
        if (
            isinstance(layer, Labels)
            and layer.metadata.get(SOURCE_KEY) == image.name
            and (VIEW_KEY in layer.metadata) == view
            and not was_edited(layer)
        ):
            return layer
    return None


def track_edits(layer: Labels) -> Labels:
    """Watch the result layer for the user's edits (``edits``)."""
    from .edits import track_edits as _track

    return _track(layer)


def show_labels(
    viewer,
    image: Image,
    data,
    *,
    metadata: dict,
    replace: bool = True,
    multiscale: bool | None = None,
    outline: bool = False,
    **geometry,
) -> Labels:
    """Put ``data`` in the result layer of ``image``: the existing one (``replace``) or a new one.

    The layer names its classes (``features``: hovering shows "tumor cell"); ``outline`` draws cell outlines
    (napari's ``contour``) instead of filled cells.
    """
    metadata = {**metadata, SOURCE_KEY: image.name}
    if not geometry:
        geometry = _geometry(image)
    view = VIEW_KEY in metadata
    layer = find_result_layer(viewer, image, view=view) if replace else None
    if layer is None and replace:
        from napari.utils.notifications import show_info

        from .edits import was_edited

        edited = [lay.name for lay in viewer.layers if lay.metadata.get(SOURCE_KEY) == image.name and was_edited(lay)]
        if edited:
            show_info(f"{edited[-1]!r} holds your corrections: the new result goes to a new layer")
    if layer is not None and bool(layer.multiscale) == bool(multiscale):
        if not _same_store(layer, data, metadata):
            layer.data = data
        layer.scale, layer.translate = geometry["scale"], geometry["translate"]
        layer.metadata = {**layer.metadata, **metadata}
        layer.contour = OUTLINE_PX if outline else 0
        layer.features = class_features()
        layer.refresh()
        return track_edits(layer)
    if layer is not None:  # in-memory <-> multiscale: a layer cannot change kind, so swap it in place
        index = viewer.layers.index(layer)
        viewer.layers.remove(layer)
    else:
        index = None
    name = f"{image.name} {'view ' if view else ''}segmentation"
    new = Labels(
        data,
        name=name,
        colormap=class_colormap(),
        metadata=metadata,
        opacity=0.6,
        multiscale=multiscale,
        features=class_features(),
        **geometry,
    )
    new.contour = OUTLINE_PX if outline else 0
    track_edits(new)
    if index is None:
        viewer.add_layer(new)
    else:
        viewer.layers.insert(index, new)
    return new


def _same_store(layer: Labels, data, metadata: dict) -> bool:
    """Whether ``data`` is the layer's own multiscale store again (same path, same level shapes).

    Its zarr arrays already read what was written since (a refresh shows it); setting ``data`` again made napari
    pick its coarsest level and, on the next draw, slice an empty array from it (the result vanished, or vispy
    raised on the zero-size slice).
    """
    if not layer.multiscale or metadata.get("store") is None or layer.metadata.get("store") != metadata["store"]:
        return False
    old = [tuple(level.shape) for level in layer.data]
    return old == [tuple(level.shape) for level in (data if isinstance(data, list) else [data])]


def paste_region(existing: np.ndarray | None, shape: tuple[int, int], box: Box, labels: np.ndarray) -> np.ndarray:
    """A full-size label array with ``labels`` written at ``box`` (onto ``existing`` when it has the shape)."""
    if existing is None or tuple(existing.shape) != tuple(shape) or not isinstance(existing, np.ndarray):
        out = np.zeros(shape, np.uint8)
    else:
        out = existing
    y0, x0, y1, x1 = box
    out[y0:y1, x0:x1] = labels
    return out


# --- regions ----------------------------------------------------------------------------------------------


def _clip(box: Sequence[float], shape: tuple[int, int], what: str) -> Box:
    # Round away float noise of the world <-> data transforms first (1023.9999 is pixel 1024, not 1023).
    box = [round(float(v), 6) for v in box]
    y0, x0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    y1, x1 = min(shape[0], math.ceil(box[2])), min(shape[1], math.ceil(box[3]))
    if y1 <= y0 or x1 <= x0:
        raise RegionError(f"{what} does not overlap the image ({shape[0]} x {shape[1]} px)")
    return (y0, x0, y1, x1)


def image_shape(image: Image) -> tuple[int, int]:
    """Level-0 (height, width) of an RGB image layer."""
    data = image.data[0] if image.multiscale else image.data
    return (int(data.shape[0]), int(data.shape[1]))


def visible_box(viewer, image: Image) -> Box:
    """The level-0 pixel box of ``image`` that the canvas shows now (2-D view)."""
    height, width = viewer.canvas.size
    zoom = viewer.scene.camera.zoom
    cy, cx = viewer.scene.camera.center[-2:]
    hy, hx = height / zoom / 2, width / zoom / 2
    corners = np.array([[cy - hy, cx - hx], [cy + hy, cx + hx]])
    data = np.array([image.world_to_data(c) for c in corners])[:, -2:]
    lo, hi = data.min(axis=0), data.max(axis=0)
    return _clip((lo[0], lo[1], hi[0] + 1, hi[1] + 1), image_shape(image), "the current view")


def round_to_blocks(box: Box, shape: tuple[int, int], block: int, downsample: float = 1.0) -> Box:
    """The level-0 box covered by the output blocks (``block`` output px, ``downsample`` level-0 px each) that
    ``box`` touches: what a slide run of that region computes."""
    step = block * downsample
    y0, x0 = math.floor(box[0] / step) * step, math.floor(box[1] / step) * step
    y1, x1 = math.ceil(box[2] / step) * step, math.ceil(box[3] / step) * step
    return (int(y0), int(x0), int(min(shape[0], y1)), int(min(shape[1], x1)))


def shape_boxes(shapes: Shapes, image: Image) -> list[Box]:
    """The level-0 bounding box of each shape, in ``image``'s pixels (shapes missing the image are dropped)."""
    if len(shapes.data) == 0:
        raise RegionError(f"Shapes layer {shapes.name!r} has no shapes; draw regions to segment")
    shape = image_shape(image)
    boxes = []
    for vertices in shapes.data:
        world = np.array([shapes.data_to_world(v) for v in np.asarray(vertices)])
        pixels = np.array([image.world_to_data(w) for w in world])[:, -2:]
        lo, hi = pixels.min(axis=0), pixels.max(axis=0)
        try:
            boxes.append(_clip((lo[0], lo[1], hi[0] + 1, hi[1] + 1), shape, "shape"))
        except RegionError:
            continue
    if not boxes:
        raise RegionError(f"no shape of {shapes.name!r} overlaps image {image.name!r}")
    return boxes


# --- training pairs from layers ---------------------------------------------------------------------------

#: Largest label array scanned for its painted area, and largest pair saved (pixels).
MAX_SCAN_PIXELS = 64_000_000
MAX_PAIR_PIXELS = 4096 * 4096


def pair_arrays(image: Image, labels: Labels, box: Box | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The image pixels under ``labels`` and the labels, cropped to ``box`` (labels pixels) or the painted area.

    The labels may be on any level of a multiscale image (e.g. a slide result at the model's resolution): the
    image level of the same size is used.
    """
    from napari_histoseg.export_pairs import labelled_box

    grid = labels.data[0] if labels.multiscale else labels.data
    shape = (int(grid.shape[-2]), int(grid.shape[-1]))
    levels = list(image.data) if image.multiscale else [image.data]
    level = next((lv for lv in levels if (int(lv.shape[0]), int(lv.shape[1])) == shape), None)
    view = labels.metadata.get(VIEW_KEY)
    if view is not None and view["level"] < len(levels):  # a crop of a level: read the image under it
        oy, ox = view["origin"]
        level = levels[view["level"]][oy : oy + shape[0], ox : ox + shape[1]]
    if level is None:
        raise RegionError(
            f"labels {labels.name!r} ({shape[0]} x {shape[1]} px) match no level of image {image.name!r} "
            f"({', '.join(f'{lv.shape[0]} x {lv.shape[1]}' for lv in levels)})"
        )
    if box is None:
        if shape[0] * shape[1] > MAX_SCAN_PIXELS:
            raise RegionError(f"labels {labels.name!r} are too large to search for painted pixels; use the view")
        box = labelled_box(np.asarray(grid))
        if box is None:
            raise RegionError(f"labels {labels.name!r} hold no painted pixels (classes 1-3)")
    y0, x0, y1, x1 = box
    if (y1 - y0) * (x1 - x0) > MAX_PAIR_PIXELS:
        raise RegionError(f"the region ({y1 - y0} x {x1 - x0} px) is too large for a training pair; zoom in")
    return np.asarray(level[y0:y1, x0:x1]), np.asarray(grid[y0:y1, x0:x1])
