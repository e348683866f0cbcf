"""Which pairs of a training folder train and which validate."""

from __future__ import annotations

import re
from collections.abc import Callable

from .config import DEFAULT_VAL_FRACTION, TrainConfig
from .pair_folders import find_pairs, split_by_image


def _group_of(regex: str | None) -> Callable[[str], str] | None:
    if regex is None:
        return None
    pattern = re.compile(regex)

    def group(name: str) -> str:
        match = pattern.search(name)
        return match.group(1) if match else name

    return group


def split_data(config: TrainConfig) -> tuple[list, list]:
    """The (train, validation) pairs of a config: the validation folder, or whole images held out.

    Corrected pairs (with a ``reviewed`` mask) are never held out: they are validated on their held-aside cells
    (``corrections``); the other pairs are split when there are at least two of them.
    """
    pairs = find_pairs(config.train_dir)
    if config.val_dir is not None:
        return pairs, find_pairs(config.val_dir)
    fraction = config.val_fraction or DEFAULT_VAL_FRACTION
    corrected = [p for p in pairs if p.reviewed is not None]
    if corrected:
        plain = [p for p in pairs if p.reviewed is None]
        if len(plain) < 2:
            return pairs, []
        train, val = split_by_image(plain, fraction, config.seed, group_of=_group_of(config.group_regex))
        return [*corrected, *train], val
    return split_by_image(pairs, fraction, config.seed, group_of=_group_of(config.group_regex))
