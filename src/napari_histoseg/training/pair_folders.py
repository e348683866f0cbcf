"""Training sets on disk: the folder layout, its pairs of files, and the image-wise train/validation split.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
INST_SUFFIXES = (".png", ".tif", ".tiff")
GT_SUFFIX = "_gt.png"


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


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder``, sorted, hidden ones (``.DS_Store``) left out."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    """The files of an optional folder with ``suffix``, by name (stem); empty when the folder is absent."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in visible_files(folder) if p.suffix.lower() == suffix}


def input_images(input_dir: Path, problems: list[str]) -> dict[str, Path]:
    """The images of an ``input/`` folder by name (stem); a name used twice is added to ``problems``."""
    images: dict[str, Path] = {}
    for path in visible_files(input_dir):
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
    for path in visible_files(gt_dir):
        if path.name.lower().endswith(GT_SUFFIX):
            gts[path.name[: -len(GT_SUFFIX)]] = path
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            problems.append(f"{path}: ground-truth files must be named <name>{GT_SUFFIX}")

    insts: dict[str, Path] = {}
    if inst_dir.is_dir():
        for path in visible_files(inst_dir):
            if path.suffix.lower() in INST_SUFFIXES:
                insts[path.stem] = path

    reviewed_dir, meta_dir = root / "reviewed", root / "meta"
    reviewed = (
        {p.stem: p for p in visible_files(reviewed_dir) if p.suffix.lower() == ".png"} if reviewed_dir.is_dir() else {}
    )
    metas = {p.stem: p for p in visible_files(meta_dir) if p.suffix.lower() == ".json"} if meta_dir.is_dir() else {}

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
