"""Post-processing of class-label maps: cell instances from the boundary class, touching cells split."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..classes import BOUNDARY, NON_TUMOR, TUMOR

# 4-connectivity: two cells touching only at a corner through a gap in the boundary stay separate.
_CONNECTIVITY_1 = ndi.generate_binary_structure(2, 1)
_CONNECTIVITY_2 = ndi.generate_binary_structure(2, 2)

# The sizes below were tuned on the bundled model's CoNSeP validation predictions (scripts/tune_postprocess.py);
# the figures that chose them are in docs/tuning-log.md ("Cell rules").
#: Smallest cell kept, in pixels of cell interior (before the boundary ring is added): smaller specks are noise.
DEFAULT_MIN_AREA = 20
#: Smallest cell kept where it touches the image edge, where only part of the nucleus is in the image.
DEFAULT_EDGE_MIN_AREA = 4
#: Reach (px) of a cell into the boundary class around it (see :func:`cells_from_labels`).
DEFAULT_EXPAND = 3.0
#: Seed rule of :func:`split_touching` (see there).
DEFAULT_SPLIT_DEPTH = 1.5
DEFAULT_SPLIT_RATIO = 0.5
#: Microns per pixel at which the sizes above are given: the bundled model's resolution, where they were tuned.
#: A label map at another resolution (a 20x slide's labels come back at 0.5 um/px) gets them converted by
#: :func:`cell_rules`; the engine converts its opening radius (given at the model's resolution) the same way
#: (``analysis.opening.radius_at``).
RULES_MPP = 0.25


def cell_rules(
    mpp: float | None = None,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    edge_min_area: int | None = DEFAULT_EDGE_MIN_AREA,
    expand: float = DEFAULT_EXPAND,
    split_depth: float = DEFAULT_SPLIT_DEPTH,
) -> dict:
    """Keyword arguments of :func:`cells_from_labels` for a label map at ``mpp`` microns per pixel.

    The sizes are given at :data:`RULES_MPP`; lengths are scaled by ``RULES_MPP / mpp`` and areas by its square
    (at least 1 px). ``mpp=None`` (resolution unknown) takes them as pixels of the map.
    """
    if mpp is not None and not mpp > 0:
        raise ValueError(f"microns per pixel must be positive, got {mpp}")
    scale = 1.0 if mpp is None else RULES_MPP / mpp

    def area(a: int | None) -> int | None:
        return None if a is None else max(1, round(a * scale * scale))

    return {
        "min_area": area(min_area),
        "edge_min_area": area(edge_min_area),
        "expand": expand * scale,
        "split_depth": split_depth * scale,
    }


def split_touching(
    instances: np.ndarray, *, depth: float = DEFAULT_SPLIT_DEPTH, ratio: float = DEFAULT_SPLIT_RATIO
) -> int:
    """Split instances that are two or more cells joined by a neck, in place; return the new instance count.

    With ``peak`` a region's largest inscribed radius (Euclidean distance to its edge), its seeds are the
    connected parts deeper than ``level = min(peak * (1 - ratio), peak - depth)`` that rise at least ``depth``
    above it (h-maxima-like, with h relative to the cell's size): two cell interiors joined through a
    gap in their boundary rings (a neck at most half as wide as the cells, by default) give two seeds and are
    split along the neck by a watershed of the distance, while a single elongated or slightly irregular cell
    gives one. Seeds are found for all regions at once; the watershed runs only on regions with several seeds,
    each on its own crop, so a region's result does not depend on where it sits in the array (blockwise
    extraction relies on that). A seed rule with an absolute depth over-split irregular nuclei
    (docs/tuning-log.md).
    """
    count = int(instances.max()) if instances.size else 0
    if count == 0:
        return 0
    dist = ndi.distance_transform_edt(instances > 0)
    peak = np.zeros(count + 1)
    peak[1:] = ndi.maximum(dist, instances, index=np.arange(1, count + 1))
    level = np.minimum(peak * (1.0 - ratio), peak - depth)
    deep = dist > level[instances]
    deep &= instances > 0
    parts, n_parts = ndi.label(deep, structure=_CONNECTIVITY_2)
    if n_parts <= count:  # fewer parts than regions: no region can have two (the common case, fast exit)
        return count
    # A seed is a part rising at least ``depth`` above its region's level (a shallow bump is not a cell).
    part_peak = np.zeros(n_parts + 1)
    part_peak[1:] = ndi.maximum(dist, parts, index=np.arange(1, n_parts + 1))
    owner = np.zeros(n_parts + 1, dtype=np.int64)
    owner[parts[deep]] = instances[deep]
    strong = part_peak >= level[owner] + depth
    strong[0] = False
    deep &= strong[parts]
    candidates = np.flatnonzero(np.bincount(owner[strong], minlength=count + 1) >= 2)
    boxes = ndi.find_objects(instances)
    next_id = count + 1
    for region in candidates:
        box = boxes[region - 1]
        y0, x0 = max(0, box[0].start - 1), max(0, box[1].start - 1)
        y1, x1 = min(instances.shape[0], box[0].stop + 1), min(instances.shape[1], box[1].stop + 1)
        crop = instances[y0:y1, x0:x1]
        inside = crop == region
        seeds, n_seeds = ndi.label(deep[y0:y1, x0:x1] & inside, structure=_CONNECTIVITY_2)
        pieces = watershed(-dist[y0:y1, x0:x1], seeds, mask=inside, connectivity=1)
        new_ids = np.concatenate(([0, region], np.arange(next_id, next_id + n_seeds - 1)))
        crop[inside] = new_ids[pieces[inside]]
        next_id += n_seeds - 1
    return next_id - 1


def cells_from_labels(
    labels: np.ndarray,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    edge_min_area: int | None = DEFAULT_EDGE_MIN_AREA,
    expand: float = DEFAULT_EXPAND,
    split: bool = True,
    split_depth: float = DEFAULT_SPLIT_DEPTH,
    split_ratio: float = DEFAULT_SPLIT_RATIO,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell instances from a class-label map.

    A cell is a 4-connected region of tumor or non-tumor pixels; the boundary class (and background) separates
    cells. With ``split``, a region that is several cells joined through a gap in their boundary rings is split
    by a watershed seeded from the cell interiors (see :func:`split_touching`; the parameters are its ``depth`` and
    ``ratio``). Regions smaller than ``min_area`` pixels (counted before the step below) are dropped; a region
    touching the edge of ``labels`` is a nucleus cut by the image edge, kept down to ``edge_min_area`` pixels
    (``None``: ``min_area``). (In blockwise extraction a window's edge lies a halo away from every cell its block
    owns unless it is the map's edge, so only the map's edge counts there.) Each cell's class is the majority of
    its tumor / non-tumor pixels (a tie goes to tumor).

    Then each cell takes the boundary-class pixels within ``expand`` pixels (Euclidean) of it, the nearest
    cell winning, so a cell's area includes its boundary ring: the boundary class is drawn as the 2-px inner
    edge of each nucleus, and without this step areas and centroids would describe only the nucleus interior.
    Boundary pixels farther than ``expand`` from any cell, and background, stay 0.

    The sizes are pixels of ``labels``; :func:`cell_rules` converts the defaults for a map at another resolution
    than :data:`RULES_MPP`.

    Returns ``(instances, classes)``: instances (H, W) int32 numbered 1..N, and classes (N + 1,) uint8 where
    ``classes[i]`` is the class of instance ``i`` (1 = tumor, 2 = non-tumor; ``classes[0]`` = 0).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D class map, got shape {labels.shape}")
    tumor_px = labels == TUMOR
    cell = tumor_px | (labels == NON_TUMOR)
    instances, count = ndi.label(cell, structure=_CONNECTIVITY_1)
    instances = instances.astype(np.int32, copy=False)
    if count == 0:
        return instances, np.zeros(1, dtype=np.uint8)
    if split:
        count = split_touching(instances, depth=split_depth, ratio=split_ratio)
    flat = instances.ravel()
    area = np.bincount(flat, minlength=count + 1)
    tumor = np.bincount(flat, weights=tumor_px.ravel(), minlength=count + 1)
    keep = area >= min_area
    if edge_min_area is not None and edge_min_area < min_area:
        cut = np.unique(np.concatenate((instances[0], instances[-1], instances[:, 0], instances[:, -1])))
        keep[cut] = area[cut] >= edge_min_area
    keep[0] = False
    # Renumber the kept cells 1..N (0 stays background).
    n_kept = int(keep.sum())
    new_id = np.zeros(count + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, n_kept + 1, dtype=np.int32)
    instances = new_id[instances]
    classes = np.zeros(n_kept + 1, dtype=np.uint8)
    classes[1:] = np.where(tumor[keep] * 2 >= area[keep], TUMOR, NON_TUMOR)
    if expand > 0 and n_kept:
        _expand_into_boundary(instances, labels == BOUNDARY, expand)
    return instances, classes


def _expand_into_boundary(instances: np.ndarray, boundary: np.ndarray, distance: float) -> None:
    """Give boundary pixels within ``distance`` of a cell to the nearest cell, in place.

    The same result as ``skimage.segmentation.expand_labels`` restricted to boundary pixels, computed only there.
    """
    ring = boundary & (instances == 0)
    if not ring.any():
        return
    nearest = ndi.distance_transform_edt(instances == 0, return_distances=False, return_indices=True)
    ry, rx = np.nonzero(ring)
    ny, nx = nearest[0][ry, rx], nearest[1][ry, rx]
    close = np.hypot(ry - ny, rx - nx) <= distance
    instances[ry[close], rx[close]] = instances[ny[close], nx[close]]
