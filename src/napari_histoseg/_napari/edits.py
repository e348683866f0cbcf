"""Which pixels of a result layer the user edited (paint, fill bucket, erase), so that corrections are kept apart.

Every result layer is watched (:func:`track_edits`): napari's ``paint`` event lists the pixels each stroke or fill
changed. An edited layer is marked (``metadata[EDITED_KEY]``), so segmenting its image again makes a new layer
instead of writing over the corrections (``layers.find_result_layer``), and "Add training pair" saves the cells the
edits touched as the pair's reviewed pixels (``export_pairs.reviewed_from_edits``): only they teach.
"""

from __future__ import annotations

import weakref

import numpy as np
from napari.layers import Labels

EDITED_KEY = "histoseg_edited"
_EDITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> list of (rows, cols) arrays


def was_edited(layer) -> bool:
    """Whether the user has painted on ``layer`` since it was made or last replaced."""
    return bool(getattr(layer, "metadata", {}).get(EDITED_KEY))


def _atom_pixels(atom) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, cols) of the pixels one history atom changed: a masked paint/fill atom (``slice_key``, ``mask``) or
    a ``data_setitem`` atom (``indices``, old, new)."""
    if hasattr(atom, "slice_key"):
        box = atom.slice_key[-2:]
        (y0, y1), (x0, x1) = ((s.start or 0, s.stop) for s in box)
        if atom.mask is None:
            rows, cols = np.mgrid[y0:y1, x0:x1]
            return rows.ravel(), cols.ravel()
        rr, cc = np.nonzero(np.asarray(atom.mask).reshape(atom.mask.shape[-2:]))
        return rr + y0, cc + x0
    indices = atom[0]
    if isinstance(indices, tuple) and len(indices) >= 2:
        return np.asarray(indices[-2]).ravel(), np.asarray(indices[-1]).ravel()
    return None


def _on_paint(event) -> None:
    layer = event.source
    strokes = _EDITS.setdefault(layer, [])
    for atom in event.value:
        pixels = _atom_pixels(atom)
        if pixels is not None and len(pixels[0]):
            strokes.append(pixels)
    if strokes and not was_edited(layer):
        layer.metadata = {**layer.metadata, EDITED_KEY: True}


def track_edits(layer: Labels) -> Labels:
    """Record the pixels painted on ``layer`` from now on (again after its data was replaced)."""
    _EDITS[layer] = []
    if EDITED_KEY in layer.metadata:
        layer.metadata = {k: v for k, v in layer.metadata.items() if k != EDITED_KEY}
    if not getattr(layer, "_histoseg_tracked", False):
        layer.events.paint.connect(_on_paint)
        layer._histoseg_tracked = True
    return layer


def edited_mask(layer, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``box`` (y0, x0, y1, x1, in the layer's level-0 pixels) the user edited, (h, w) bool."""
    y0, x0, y1, x1 = box
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for rows, cols in _EDITS.get(layer, []):
        inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        mask[rows[inside] - y0, cols[inside] - x0] = True
    return mask


def review_of_pair(image, labels, box, classes: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """For "Add training pair": the reviewed pixels of the pair cut from ``labels`` at ``box`` (None: the painted
    area, as ``layers.pair_arrays`` takes it) and its microns per pixel. Reviewed is None for a layer without
    recorded edits (painted from scratch: every pixel teaches)."""
    from napari_histoseg.export_pairs import labelled_box, reviewed_from_edits

    from .cellularity import labels_mpp
    from .resolution_field import layer_mpp

    mpp = labels_mpp(labels) or layer_mpp(image)[0]
    if not _EDITS.get(labels):
        return None, mpp
    if box is None:
        grid = labels.data[0] if labels.multiscale else labels.data
        box = labelled_box(np.asarray(grid))
    edited = edited_mask(labels, box)
    if not edited.any():
        return None, mpp
    return reviewed_from_edits(classes, edited), mpp


def on_edits_settled(layer: Labels, callback, delay_ms: int = 600) -> None:
    """Call ``callback(layer)`` once the user pauses editing ``layer`` (``delay_ms`` after the last stroke or fill),
    e.g. to recount the readout. One callback per layer: a later call replaces the earlier one."""
    from qtpy.QtCore import QTimer

    timer = getattr(layer, "_histoseg_settle_timer", None)
    if timer is None:
        timer = QTimer()
        timer.setSingleShot(True)
        layer.events.paint.connect(lambda _event: timer.start())
        layer._histoseg_settle_timer = timer
    else:
        timer.timeout.disconnect()
    timer.setInterval(delay_ms)
    timer.timeout.connect(lambda: callback(layer))
