"""Torch datasets over decoded samples, and the data-loader factory.

Images are decoded once (``samples.load_pairs``) and kept in memory; a training item is a random patch, augmented
with numpy/scipy. Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so runs are reproducible and do
not depend on the number of workers or on the order in which workers handle items.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import augment as augment_pair
from .border_weights import DEFAULT_BORDER_SIGMA, border_weights
from .samples import Sample


def _pad_to(image: np.ndarray, labels: np.ndarray, height: int, width: int, mode: str):
    """Pad at the bottom/right to at least (height, width): image with ``mode`` (or white), labels with 0."""
    ph, pw = max(0, height - labels.shape[0]), max(0, width - labels.shape[1])
    if ph == 0 and pw == 0:
        return image, labels
    if mode == "white":
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=255)
    else:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=0)
    return image, labels


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    # Converted in numpy: small torch ops in a loader pay for torch's thread pool on every call.
    return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / np.float32(255))


class PatchDataset(Dataset):
    """Random ``patch`` x ``patch`` crops of the samples, augmented; items are ``(image, labels)``.

    ``image`` is float32 (3, p, p) in [0, 1] and ``labels`` int64 (p, p). With ``border_weight`` > 0, items are
    ``(image, labels, border)``: ``border`` float32 (p, p) is the U-Net weight term that separates touching cells
    (``border_weights.border_weights`` with ``w0 = border_weight``), computed on the augmented labels. An epoch
    has ``samples_per_epoch`` items; by default as many as the patches needed to tile every image once (an image
    of H x W contributes ceil(H/p) * ceil(W/p) slots, so large images are visited in proportion to their area).
    Images smaller than the patch are padded with white (labels 0). With ``sample_weights`` (one per sample),
    each item draws its image with those odds instead. Call ``set_epoch`` before each epoch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        patch: int = 256,
        samples_per_epoch: int | None = None,
        augment: bool = True,
        stain_jitter: float = 0.0,
        seed: int = 0,
        small_rotation_deg: float = 15,
        max_shift: int = 16,
        border_weight: float = 0.0,
        border_sigma: float = DEFAULT_BORDER_SIGMA,
        sample_weights: Sequence[float] | None = None,
    ):
        if not samples:
            raise ValueError("PatchDataset needs at least one sample")
        if patch < 8 or patch % 8:
            raise ValueError(f"patch must be a positive multiple of 8 (the network downsamples 3 times), got {patch}")
        self.samples = list(samples)
        self.patch = patch
        self.augment = augment
        self.stain_jitter = float(stain_jitter)
        self.seed = int(seed)
        self.small_rotation_deg = small_rotation_deg
        self.max_shift = max_shift
        self.border_weight = float(border_weight)
        self.border_sigma = float(border_sigma)
        slots = [math.ceil(s.labels.shape[0] / patch) * math.ceil(s.labels.shape[1] / patch) for s in self.samples]
        self._slot_image = np.repeat(np.arange(len(self.samples)), slots)
        self.samples_per_epoch = int(samples_per_epoch) if samples_per_epoch else len(self._slot_image)
        self._draw = None
        if sample_weights is not None:
            weights = np.asarray(sample_weights, dtype=np.float64)
            if weights.shape != (len(self.samples),) or not (weights >= 0).all() or weights.sum() <= 0:
                raise ValueError(f"sample_weights must be {len(self.samples)} non-negative numbers, not all 0")
            self._draw = np.cumsum(weights / weights.sum())
        # Shared memory, so that persistent worker processes see set_epoch made in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches and augmentations ``__getitem__`` returns."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator for item ``index`` of the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = self.item_rng(index)
        if self._draw is not None:
            chosen = min(int(np.searchsorted(self._draw, rng.random(), side="right")), len(self.samples) - 1)
            sample = self.samples[chosen]
        elif self.samples_per_epoch == len(self._slot_image):
            sample = self.samples[self._slot_image[index]]
        else:
            sample = self.samples[self._slot_image[rng.integers(len(self._slot_image))]]
        p = self.patch
        image, labels = _pad_to(sample.image, sample.labels, p, p, "white")
        top = int(rng.integers(labels.shape[0] - p + 1))
        left = int(rng.integers(labels.shape[1] - p + 1))
        image, labels = image[top : top + p, left : left + p], labels[top : top + p, left : left + p]
        if self.augment:
            image, labels = augment_pair(
                image,
                labels,
                rng,
                small_rotation_deg=self.small_rotation_deg,
                max_shift=self.max_shift,
                stain_jitter=self.stain_jitter,
            )
        item = (_to_tensor(image), torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64)))
        if self.border_weight > 0:
            item += (torch.from_numpy(border_weights(labels, self.border_weight, self.border_sigma)),)
        return item


class EvalDataset(Dataset):
    """Whole images for validation, padded (reflect, labels 0) at the bottom/right to a multiple of 8.

    Items are ``(image, labels, inst, size, name)``: image float32 (3, H', W') in [0, 1], labels int64
    (H', W'), inst int64 (H', W') or an empty tensor when the sample has no instance map, ``size`` the
    original (H, W) to crop predictions back to before scoring, and the sample name. Images of different sizes
    need ``batch_size=1``.
    """

    def __init__(self, samples: Sequence[Sample], multiple: int = 8):
        self.samples = list(samples)
        self.multiple = multiple

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        h, w = sample.labels.shape
        m = self.multiple
        ph, pw = -(-h // m) * m, -(-w // m) * m
        image, labels = _pad_to(sample.image, sample.labels, ph, pw, "reflect" if min(h, w) > 1 else "edge")
        if sample.inst is not None:
            inst = torch.from_numpy(np.pad(sample.inst, ((0, ph - h), (0, pw - w))).astype(np.int64))
        else:
            inst = torch.zeros(0, dtype=torch.int64)
        return _to_tensor(image), torch.from_numpy(labels.astype(np.int64)), inst, (h, w), sample.name


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset drawn from ``(seed, dataset.epoch)``: same order on resume."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        epoch = int(getattr(self.dataset, "epoch", 0))
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.dataset))
        return iter(order.tolist())


def default_num_workers() -> int:
    """Loader processes: none on a small CPU (the in-memory dataset is fast), a few beside a GPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus <= 2:
        return 0
    if torch.cuda.is_available():
        return min(8, cpus - 1)
    return min(4, cpus // 2)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader: seeded epoch-wise shuffling, persistent workers, pinned memory on CUDA."""
    if num_workers is None:
        num_workers = default_num_workers()
    sampler = EpochShuffleSampler(dataset, seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        prefetch_factor=4 if num_workers > 0 else None,
    )
