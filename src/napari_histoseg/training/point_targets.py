"""Training targets for point-labelled images: the starting model's cells, typed by the points inside them.

A point set says which type some cells are, not where any nucleus ends, and says nothing about the nuclei left
without a point. So a target pixel here is a *set* of allowed classes (see ``loss.partial_cross_entropy``):

- the starting model's (the teacher's) background and boundary pixels are kept as they are, so shapes are
  learnt as before (self-training: the teacher's own output, no worse than the teacher);
- a teacher cell with points of one type inside it becomes that type, all of its pixels;
- a teacher cell with no point, or with points of both types, becomes :data:`CELL_ANY`: "a cell, of either
  type", so the network is never taught that an unlabelled nucleus is background or of a type nobody said;
- every point gets a disk of its type (the teacher may have found only part of its nucleus, or none of it), and
  the teacher's background around the disk is :data:`IGNORE`, since the real nucleus is bigger than the disk;
- the teacher's background where the image is stained like a nucleus (``nuclear``, e.g. :func:`hematoxylin_mask`)
  is :data:`IGNORE` too: the bundled model, trained on colon, misses many large carcinoma nuclei, and teaching
  "background" there would teach it to miss them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..analysis.instances import cell_rules, cells_from_labels
from ..classes import BACKGROUND, NON_TUMOR, TUMOR

#: Target code: a cell of either type (tumor or non-tumor), type unknown.
CELL_ANY = 4
#: Target code: no loss at this pixel.
IGNORE = 255
#: Radius (um) of the disk drawn for a point the teacher found no cell at: well inside a nucleus (5-10 um across).
POINT_DISK_UM = 1.5
#: Radius (um) around such a point within which the teacher's background is not trusted.
POINT_IGNORE_UM = 4.0
#: How far (um) a point may lie outside a teacher cell and still type it (annotators click near the centre; the
#: teacher's cell may be slightly small).
POINT_SNAP_UM = 1.5


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return dy[inside], dx[inside]


def _paint(target: np.ndarray, centre: tuple[int, int], offsets, value: int, where: np.ndarray | None = None) -> None:
    ys, xs = offsets[0] + centre[0], offsets[1] + centre[1]
    ok = (ys >= 0) & (ys < target.shape[0]) & (xs >= 0) & (xs < target.shape[1])
    ys, xs = ys[ok], xs[ok]
    if where is not None:
        keep = where[ys, xs]
        ys, xs = ys[keep], xs[keep]
    target[ys, xs] = value


def hematoxylin_mask(image: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bool stained like nuclei: hematoxylin optical density above the image's Otsu threshold."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    hema = rgb2hed(np.asarray(image)[..., :3])[..., 0]
    if not np.ptp(hema) > 0:
        return np.zeros(hema.shape, dtype=bool)
    return hema > threshold_otsu(hema)


def point_targets(
    teacher: np.ndarray,
    points: np.ndarray,
    is_tumor: np.ndarray,
    mpp: float,
    nuclear: np.ndarray | None = None,
) -> np.ndarray:
    """The partial target (H, W) uint8 for an image whose teacher class map is ``teacher`` (H, W), at ``mpp``.

    ``points`` (N, 2) are (row, col) in ``teacher``'s pixels and ``is_tumor`` (N,) their types; ``nuclear``
    (H, W) bool marks nucleus-like pixels where the teacher's background is not trusted. Codes: 0-3 the four
    classes, :data:`CELL_ANY`, :data:`IGNORE` (module doc).
    """
    teacher = np.asarray(teacher)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    is_tumor = np.asarray(is_tumor, dtype=bool).reshape(-1)
    if len(points) != len(is_tumor):
        raise ValueError(f"{len(points)} points but {len(is_tumor)} types")
    target = teacher.astype(np.uint8, copy=True)
    cell = (teacher == TUMOR) | (teacher == NON_TUMOR)
    target[cell] = CELL_ANY
    instances, _ = cells_from_labels(teacher, **cell_rules(mpp))
    count = int(instances.max(initial=0))
    snap_px = POINT_SNAP_UM / mpp
    if count and len(points):
        # The nearest teacher cell pixel of every pixel, to snap points that fall just outside their cell.
        distance, (near_r, near_c) = ndi.distance_transform_edt(instances == 0, return_indices=True)
    rows = np.clip(np.round(points[:, 0]).astype(int), 0, teacher.shape[0] - 1)
    cols = np.clip(np.round(points[:, 1]).astype(int), 0, teacher.shape[1] - 1)
    owner = np.zeros(len(points), dtype=np.int64)
    if count and len(points):
        close = distance[rows, cols] <= snap_px
        owner[close] = instances[near_r[rows[close], cols[close]], near_c[rows[close], cols[close]]]
    votes_tumor = np.bincount(owner, weights=is_tumor, minlength=count + 1)
    votes_other = np.bincount(owner, weights=~is_tumor, minlength=count + 1)
    typed = np.zeros(count + 1, dtype=np.uint8)
    typed[(votes_tumor > 0) & (votes_other == 0)] = TUMOR
    typed[(votes_other > 0) & (votes_tumor == 0)] = NON_TUMOR
    typed[0] = 0
    paint = typed[instances]
    target[(paint > 0) & cell] = paint[(paint > 0) & cell]

    background = teacher == BACKGROUND
    if nuclear is not None:
        target[background & np.asarray(nuclear, dtype=bool)] = IGNORE
    ignore_offsets = _disk_offsets(POINT_IGNORE_UM / mpp)
    disk_offsets = _disk_offsets(max(1.0, POINT_DISK_UM / mpp))
    for i in range(len(points)):
        _paint(target, (rows[i], cols[i]), ignore_offsets, IGNORE, where=background)
    for i in range(len(points)):
        _paint(target, (rows[i], cols[i]), disk_offsets, TUMOR if is_tumor[i] else NON_TUMOR)
    return target
