"""Training data from folder pairs: discovery, validation, reading, class weights and the image-wise split.

Layout of a training set ``DIR``::

    DIR/input/<name>.<png|jpg|jpeg|tif|tiff>   the H&E image (RGB, RGBA, grey, 8 or 16 bit)
    DIR/gt/<name>_gt.png                        colour-coded classes (see ``classes.CLASS_COLORS``)
    DIR/inst/<name>.<png|tif>                   optional instance map (uint16, 0 = background)
    DIR/reviewed/<name>.png                     optional: the pixels a user corrected or confirmed (non-zero);
                                                only they teach, the rest holds the model (``corrections``)
    DIR/meta/<name>.json                        optional: {"mpp": the image's microns per pixel}

Every check runs over the whole set before anything is returned: problems are collected and raised together
as one :class:`DatasetError`, so a user fixes a folder in one pass instead of one file per training attempt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.stain_stats import LabStats, lab_stats
from ..classes import CLASS_COLORS, CLASS_NAMES, NUM_CLASSES
from ..pixels import channels_last, scale_to_uint8, white_level

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
INST_SUFFIXES = (".png", ".tif", ".tiff")
GT_SUFFIX = "_gt.png"
_TIFF = (".tif", ".tiff")
# Offending colours listed in an error message, per file (the most frequent first).
_MAX_COLOURS_REPORTED = 5
# More distinct wrong colours than this in one mask: hint that it was saved lossily.
_LOSSY_HINT_COLOURS = 10


class DatasetError(ValueError):
    """A training set is unusable; the message names every file and its problem.

    ``problems`` holds one line per problem when several were found at once.
    """

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems in the training data:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True)
class Pair:
    """One training image, its colour-coded ground truth, and optionally its instance map."""

    name: str
    image: Path
    gt: Path
    inst: Path | None = None
    reviewed: Path | None = None
    meta: Path | None = None


@dataclass
class Sample:
    """A decoded pair: image (H, W, 3) uint8, class labels (H, W) uint8, instances (H, W) int32 or None."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    inst: np.ndarray | None
    reviewed: np.ndarray | None = None  # (H, W) bool: the pixels a user corrected or confirmed (a corrected pair)
    mpp: float | None = None  # the image's microns per pixel, when its pair records it


def pooled_stain_stats(samples: Sequence[Sample]) -> LabStats | None:
    """Colour statistics of a set of decoded pairs, pooled: a folder of patches stands for one slide (the
    statistics of a single patch depend too much on what it shows). ``None`` with too little tissue."""
    return lab_stats([s.image for s in samples])


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def input_images(input_dir: Path, problems: list[str]) -> dict[str, Path]:
    """The images of an ``input/`` folder by name (stem); a name used twice is added to ``problems``."""
    images: dict[str, Path] = {}
    for path in _files(input_dir):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            problems.append(f"{path}: duplicate image name {path.stem!r} (also {images[path.stem].name})")
            continue
        images[path.stem] = path
    return images


def find_pairs(root: str | Path) -> list[Pair]:
    """List the ``input``/``gt`` pairs under ``root``, sorted by name.

    Raises :class:`DatasetError` listing every problem: a missing ``input/`` or ``gt/`` folder, an input
    without its gt file, a gt file without its input, two inputs with the same name, a gt file not named
    ``*_gt.png``. Files with other suffixes (``Thumbs.db``, ``notes.txt``) are ignored.
    """
    root = Path(root)
    input_dir, gt_dir, inst_dir = root / "input", root / "gt", root / "inst"
    missing = [str(d) for d in (input_dir, gt_dir) if not d.is_dir()]
    if missing:
        raise DatasetError(
            f"{root}: missing folder(s) {', '.join(missing)}; a training set needs input/<name>.png "
            "and gt/<name>_gt.png"
        )
    problems: list[str] = []

    images = input_images(input_dir, problems)

    gts: dict[str, Path] = {}
    for path in _files(gt_dir):
        if path.name.lower().endswith(GT_SUFFIX):
            gts[path.name[: -len(GT_SUFFIX)]] = path
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            problems.append(f"{path}: ground-truth files must be named <name>{GT_SUFFIX}")

    insts: dict[str, Path] = {}
    if inst_dir.is_dir():
        for path in _files(inst_dir):
            if path.suffix.lower() in INST_SUFFIXES:
                insts[path.stem] = path

    reviewed_dir, meta_dir = root / "reviewed", root / "meta"
    reviewed = {p.stem: p for p in _files(reviewed_dir) if p.suffix.lower() == ".png"} if reviewed_dir.is_dir() else {}
    metas = {p.stem: p for p in _files(meta_dir) if p.suffix.lower() == ".json"} if meta_dir.is_dir() else {}

    for name in sorted(images.keys() - gts.keys()):
        problems.append(f"{images[name]}: no ground truth (expected {gt_dir / (name + GT_SUFFIX)})")
    for name in sorted(gts.keys() - images.keys()):
        problems.append(f"{gts[name]}: ground truth without an input image (expected {input_dir / name}.png)")
    if not images and not gts and not problems:
        problems.append(f"{root}: no images in {input_dir}")
    if problems:
        raise DatasetError(problems)
    return [
        Pair(name, images[name], gts[name], insts.get(name), reviewed.get(name), metas.get(name))
        for name in sorted(images)
    ]


def _imread(path: Path) -> np.ndarray:
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
    array = _imread(path)
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
    rgb = _to_rgb(_to_uint8(_imread(path), path), path)
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
    array = _imread(path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(
            f"{path}: an instance map must be a single-channel integer image, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int32)


def load_pairs(pairs: Iterable[Pair], *, tolerance: int = 60) -> tuple[list[Sample], dict]:
    """Decode and validate every pair; return the samples and a report.

    All files are read first and every problem (unreadable file, wrong colour, size mismatch) is collected
    into one :class:`DatasetError`. The report is
    ``{"images": n, "snapped_pixels": n, "pixels_per_class": [n0, n1, n2, n3]}``.
    """
    pairs = list(pairs)
    samples: list[Sample] = []
    problems: list[str] = []
    snapped_total = 0
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for pair in pairs:
        image = labels = inst = None
        try:
            image = read_image(pair.image)
        except DatasetError as exc:
            problems.extend(exc.problems)
        try:
            labels, snapped = read_mask(pair.gt, tolerance=tolerance)
            snapped_total += snapped
        except DatasetError as exc:
            problems.extend(exc.problems)
        if pair.inst is not None:
            try:
                inst = read_instances(pair.inst)
            except DatasetError as exc:
                problems.extend(exc.problems)
        if image is not None and labels is not None and image.shape[:2] != labels.shape:
            problems.append(
                f"{pair.gt}: size {labels.shape[1]}x{labels.shape[0]} does not match its image "
                f"{pair.image.name} ({image.shape[1]}x{image.shape[0]})"
            )
            continue
        if inst is not None and image is not None and inst.shape != image.shape[:2]:
            problems.append(
                f"{pair.inst}: size {inst.shape[1]}x{inst.shape[0]} does not match its image "
                f"{pair.image.name} ({image.shape[1]}x{image.shape[0]})"
            )
            continue
        reviewed, mpp = _review_of(pair, labels, problems)
        if image is not None and labels is not None:
            counts += np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            samples.append(Sample(pair.name, image, labels, inst, reviewed, mpp))
    if problems:
        raise DatasetError(problems)
    if snapped_total:
        log.info("snapped %d noisy mask pixel(s) to the nearest class colour", snapped_total)
    report = {"images": len(samples), "snapped_pixels": snapped_total, "pixels_per_class": counts.tolist()}
    return samples, report


def _review_of(pair: Pair, labels: np.ndarray | None, problems: list[str]) -> tuple[np.ndarray | None, float | None]:
    """The pair's reviewed mask (bool, its labels' size) and recorded um/px; problems appended to ``problems``."""
    reviewed = mpp = None
    if pair.reviewed is not None:
        try:
            mask = _imread(pair.reviewed)
            mask = mask.any(axis=-1) if mask.ndim == 3 else mask.astype(bool)
            if labels is not None and mask.shape != labels.shape:
                problems.append(
                    f"{pair.reviewed}: size {mask.shape[1]}x{mask.shape[0]} does not match its mask "
                    f"{pair.gt.name} ({labels.shape[1]}x{labels.shape[0]})"
                )
            else:
                reviewed = np.ascontiguousarray(mask, dtype=bool)
        except DatasetError as exc:
            problems.extend(exc.problems)
    if pair.meta is not None:
        try:
            value = json.loads(pair.meta.read_text()).get("mpp")
            if value is not None:
                mpp = float(value)
                if not (math.isfinite(mpp) and mpp > 0):
                    raise ValueError(f"mpp must be a positive number, got {value!r}")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{pair.meta}: cannot read the pair's resolution ({exc})")
            mpp = None
    return reviewed, mpp


def _label_arrays(items) -> Iterable[np.ndarray]:
    if isinstance(items, np.ndarray):
        items = [items]
    for item in items:
        yield item.labels if isinstance(item, Sample) else np.asarray(item)


def class_counts(samples_or_label_arrays, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixels per class (int64) over samples or label arrays."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for labels in _label_arrays(samples_or_label_arrays):
        flat = labels.ravel()
        if flat.size and int(flat.max()) >= num_classes:
            raise ValueError(f"labels hold class {int(flat.max())}; classes are 0..{num_classes - 1}")
        counts += np.bincount(flat, minlength=num_classes)
    return counts


def weights_from_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class weights N / N_c (float32) from pixel counts.

    A class with no pixels cannot be weighted by N / 0: it gets the largest weight of the present classes and
    a warning naming it (so the loss stays finite if the class appears in a later batch or a different set).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("cannot compute class weights: the training set has no labelled pixels")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = total / counts[present]
    for index in np.flatnonzero(~present):
        name = CLASS_NAMES[index] if index < len(CLASS_NAMES) else f"class {index}"
        warnings.warn(
            f"class {index} ({name}) has no pixels in the training set; giving it weight "
            f"{weights[present].max():.3g} (the largest weight of the present classes)",
            stacklevel=3,
        )
    weights[~present] = weights[present].max()
    return weights.astype(np.float32)


def class_weights(samples_or_label_arrays, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class weights N / N_c over the whole training set (float32); see ``weights_from_counts``."""
    return weights_from_counts(class_counts(samples_or_label_arrays, num_classes))


def _cache_key(pairs: Sequence[Pair], tolerance: int) -> str:
    entries = []
    for pair in pairs:
        for path in (pair.image, pair.gt):
            stat = path.stat()
            entries.append([pair.name, path.name, stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"tolerance": tolerance, "files": entries}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached_class_weights(
    pairs: Iterable[Pair], cache_dir: str | Path, *, tolerance: int = 60, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Class weights over ``pairs``, cached as JSON in ``cache_dir``.

    The cache key covers file names, sizes and modification times, so editing or adding a mask recomputes.
    Weights and pixel counts are logged (INFO).
    """
    pairs = list(pairs)
    cache_dir = Path(cache_dir)
    cache_file = cache_dir / f"class_weights_{_cache_key(pairs, tolerance)}.json"
    counts = None
    if cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
            counts = np.asarray(cached["pixels_per_class"], dtype=np.int64)
            if counts.shape != (num_classes,):
                counts = None
        except (OSError, ValueError, KeyError):
            counts = None  # a corrupt cache is recomputed, never trusted
    if counts is None:
        counts = np.zeros(num_classes, dtype=np.int64)
        problems: list[str] = []
        for pair in pairs:
            try:
                labels, _ = read_mask(pair.gt, tolerance=tolerance)
            except DatasetError as exc:
                problems.extend(exc.problems)
                continue
            counts += class_counts([labels], num_classes)
        if problems:
            raise DatasetError(problems)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps({"pixels_per_class": counts.tolist(), "images": len(pairs)}, indent=1) + "\n")
    weights = weights_from_counts(counts)
    log.info(
        "class weights N/N_c over %d image(s): %s (pixels per class %s)",
        len(pairs),
        ", ".join(f"{n}={w:.3g}" for n, w in zip(CLASS_NAMES, weights, strict=False)),
        counts.tolist(),
    )
    return weights


def split_by_image(
    pairs: Sequence[Pair],
    fraction: float,
    seed: int,
    *,
    group_of: Callable[[str], str] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images: return (train, validation) with about ``fraction`` of the images in validation.

    Both sides get at least one image; patches of one image are never on both sides. ``group_of`` maps an
    image name to a group (e.g. its source tile) when several files were cut from one image; whole groups are
    then held out together.
    """
    pairs = list(pairs)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(group_of(pair.name) if group_of else pair.name, []).append(pair)
    if len(groups) < 2:
        raise DatasetError(
            f"cannot hold out a validation set: {len(pairs)} image(s) in {len(groups)} group(s); "
            "need at least 2 (or give a separate validation folder)"
        )
    keys = sorted(groups)
    n_val = min(max(1, math.floor(fraction * len(keys) + 0.5)), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    train = [p for k in keys if k not in val_keys for p in groups[k]]
    val = [p for k in keys if k in val_keys for p in groups[k]]
    return train, val
