"""Per-pixel loss weights that separate touching cells (Ronneberger et al. 2015, U-Net, eq. 2).

A pixel near two cells gets the extra weight ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, where ``d1`` and ``d2``
are its distances to the nearest and second-nearest cell: the gaps and boundary rings between touching nuclei,
which decide whether two nuclei come out as one, weigh up to ``1 + w0 / w_c`` times more in the loss. Cells are
those of the class-label map itself (``postprocess.cells_from_labels``: interiors with their boundary rings), so
any folder of colour-coded masks can use it; no instance maps are needed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..analysis.instances import cells_from_labels

#: U-Net's falloff width, in pixels (its w0, 10, is in the units of the class weights: background ~1).
DEFAULT_BORDER_SIGMA = 5.0


def border_weights(labels: np.ndarray, w0: float, sigma: float = DEFAULT_BORDER_SIGMA) -> np.ndarray:
    """The border term of the U-Net weight map of a class-label map (H, W): float32 (H, W), 0 far from cells.

    Distances count only up to ``3 * sigma`` (beyond it the term is below 1.1% of ``w0``), so the cost grows with
    the number of cells, not with the image area times the number of cells.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    if w0 == 0:
        return out
    instances, _ = cells_from_labels(labels, min_area=1, split=False)
    reach = int(math.ceil(3 * sigma))
    d1 = np.full(labels.shape, np.inf, dtype=np.float32)
    d2 = np.full(labels.shape, np.inf, dtype=np.float32)
    h, w = labels.shape
    for index, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - reach), min(h, box[0].stop + reach)
        x0, x1 = max(0, box[1].start - reach), min(w, box[1].stop + reach)
        inside = instances[y0:y1, x0:x1] == index
        d = ndi.distance_transform_edt(~inside).astype(np.float32)
        near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        closer = d < near
        second[...] = np.where(closer, near, np.minimum(second, d))
        near[...] = np.where(closer, d, near)
    both = np.isfinite(d2)
    total = d1[both] + d2[both]
    out[both] = w0 * np.exp(-(total * total) / (2 * sigma * sigma))
    return out
