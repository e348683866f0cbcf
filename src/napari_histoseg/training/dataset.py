"""Kept for callers written before the rename: the torch datasets live in :mod:`.patch_datasets`."""

from __future__ import annotations

from .patch_datasets import EpochShuffleSampler, EvalDataset, PatchDataset, default_num_workers, make_loader

__all__ = ["EpochShuffleSampler", "EvalDataset", "PatchDataset", "default_num_workers", "make_loader"]
