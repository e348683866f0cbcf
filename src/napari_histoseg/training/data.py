"""The training-set API in one import (kept for callers written before it was split into modules).

New code imports from the module that holds each name: :mod:`.pair_folders` (the folder layout, :class:`Pair`,
:func:`find_pairs`, :func:`split_by_image`, :class:`DatasetError`), :mod:`.image_files` (:func:`read_image`,
:func:`read_mask`, :func:`read_instances`), :mod:`.samples` (:class:`Sample`, :func:`load_pairs`,
:func:`pooled_stain_stats`) and :mod:`.class_weights`.
"""

from __future__ import annotations

from .class_weights import class_counts, class_weights, weights_from_counts
from .image_files import read_image, read_instances, read_mask
from .pair_folders import (
    GT_SUFFIX,
    IMAGE_SUFFIXES,
    INST_SUFFIXES,
    DatasetError,
    Pair,
    find_pairs,
    input_images,
    split_by_image,
    visible_files,
)
from .samples import Sample, load_pairs, pooled_stain_stats

__all__ = [
    "GT_SUFFIX",
    "IMAGE_SUFFIXES",
    "INST_SUFFIXES",
    "DatasetError",
    "Pair",
    "Sample",
    "class_counts",
    "class_weights",
    "find_pairs",
    "input_images",
    "load_pairs",
    "pooled_stain_stats",
    "read_image",
    "read_instances",
    "read_mask",
    "split_by_image",
    "visible_files",
    "weights_from_counts",
]
