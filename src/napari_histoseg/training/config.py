"""What a training run is asked to do: :class:`TrainConfig`, validated, JSON-serialisable (``RUN_DIR/config.json``)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..analysis.opening import DEFAULT_OPENING_RADIUS
from .border_weights import DEFAULT_BORDER_SIGMA
from .corrections import DEFAULT_KEEP_TYPES, DEFAULT_KEEP_WEIGHT

OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")
#: What a run trains: every layer, or only the decoder side (decoder, head, classifier), or the head and classifier.
TRAINABLE = ("all", "decoder", "head")
#: Metrics "best" can be chosen by; all higher-is-better except ``val_loss``.
SELECT_METRICS = ("score", "mean_f1", "detection_f1", "type_f1_tumor", "type_f1_non_tumor", "val_loss")
DEFAULT_VAL_FRACTION = 0.2
#: Options that may change when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = frozenset({"epochs", "device", "num_workers", "max_steps", "val_every", "out"})


class TrainConfigError(ValueError):
    """A training configuration or run folder cannot be used; the message names the option or file."""


@dataclass
class TrainConfig:
    """Every option of ``histoseg train``; JSON-serialisable (saved as ``RUN_DIR/config.json``).

    - ``val_dir``: a separate validation folder. Without it, ``val_fraction`` of the training images (0 means
      the default, 0.2) are held out as whole images; ``group_regex`` (its first group names the source image,
      e.g. ``"^(.+)_\\d+$"`` for ``tile_003``) keeps patches cut from one image on one side.
    - ``width``: width multiplier of the network (1.0 = 4.1 M parameters). With ``init`` and no ``width``, the
      checkpoint's architecture is used.
    - ``warmup``: steps of linear learning-rate warm-up. ``scheduler``: ``cosine`` decays per step to 1% of
      ``lr`` at the last epoch; ``plateau`` halves it after 3 validations without improvement.
    - ``samples_per_epoch``: patches per epoch (default: enough to tile every training image once).
    - ``amp``: bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16 (ignored elsewhere). ``model_mpp``:
      microns per pixel of the training images, stored in the model card so inference matches it (CoNSeP: 0.25).
    - ``max_steps``: stop after this many optimizer steps in total (smoke tests, benchmarks).
    - ``ema``: decay of an exponential moving average of the weights (and BatchNorm statistics), updated after
      every step, e.g. 0.99 (an average over ~100 steps), to smooth out the step-to-step noise of small batches.
      When set, validation and the saved checkpoints use the averaged weights; None trains without it.
    - ``points_dirs``: point-labelled folders trained beside the colour-mask pairs (``points``), with partial
      targets from ``teacher`` (default: ``init``, else the bundled model; see ``point_targets``);
      ``points_share`` of the patches come from them. ``points_val``: a point-labelled folder scored at every
      validation (its tumor type F1 and cellularity error join the selection score). ``points_mpp`` and
      ``tumor_classes`` override the folders' ``points.json``; images of ``exclude_sites`` (TCGA site codes) are
      left out of training, to keep a hospital aside as a cross-site check.
    - ``freeze_norm``: keep BatchNorm layers in inference mode while training (their running statistics are not
      updated; their scale and shift still learn). None (the default) freezes them when fine-tuning (``init``):
      a few small batches otherwise move the running means enough to break the starting model.
    - ``keep_weight``: for corrected pairs (``reviewed/<name>.png``, see ``corrections``), the weight of the term
      that holds the pixels the user did not review at the starting model's output (0: they are ignored);
      ``keep_types`` how much that term holds their cell types too (0: only where cells are and end; 1: all).
    - ``trainable``: ``all`` layers, or only the ``decoder`` side (decoder, head and classifier) or the ``head``
      (head and classifier); the rest keep the starting weights (fine-tuning on a few images).
    - ``border_weight``: U-Net's ``w0``, an extra loss weight on the pixels between touching cells (gaps and
      boundary rings), ``w0 * exp(-(d1 + d2)^2 / (2 border_sigma^2))`` with d1, d2 the distances (px) to the two
      nearest cells, added to the class weight (see ``border_weights``); 0 (the default) trains without it.
    """

    train_dir: str
    out: str
    val_dir: str | None = None
    val_fraction: float = 0.0
    group_regex: str | None = None
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    patch: int = 256
    optimizer: str = "rmsprop"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup: int = 0
    init: str | None = None
    width: float | None = None
    stain_jitter: float = 0.0
    samples_per_epoch: int | None = None
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    amp: bool = True
    model_mpp: float | None = None
    select_metric: str = "score"
    val_every: int = 1
    max_steps: int | None = None
    opening_radius: int = DEFAULT_OPENING_RADIUS
    ema: float | None = None
    border_weight: float = 0.0
    border_sigma: float = DEFAULT_BORDER_SIGMA
    points_dirs: list[str] | None = None
    points_val: str | None = None
    points_mpp: float | None = None
    tumor_classes: list[int] | None = None
    exclude_sites: list[str] | None = None
    points_share: float = 0.5
    teacher: str | None = None
    freeze_norm: bool | None = None
    keep_weight: float = DEFAULT_KEEP_WEIGHT
    keep_types: float = DEFAULT_KEEP_TYPES
    trainable: str = "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`TrainConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**d)

    def validated(self) -> TrainConfig:
        """A copy with absolute paths, after checking every option; raises :class:`TrainConfigError`."""
        c = TrainConfig(**self.to_dict())
        for check in (_check_folders, _check_optimisation, _check_run, _check_points):
            check(c)
        c.amp = bool(c.amp)
        c.train_dir = str(Path(c.train_dir).resolve())
        c.out = str(Path(c.out).resolve())
        c.val_dir = None if c.val_dir is None else str(Path(c.val_dir).resolve())
        c.init = None if c.init is None else str(Path(c.init).resolve())
        c.teacher = None if c.teacher is None else str(Path(c.teacher).resolve())
        c.points_dirs = None if not c.points_dirs else [str(Path(d).resolve()) for d in c.points_dirs]
        c.points_val = None if c.points_val is None else str(Path(c.points_val).resolve())
        return c


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise TrainConfigError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_folders(c: TrainConfig) -> None:
    _need(bool(c.train_dir) and Path(c.train_dir).is_dir(), f"training folder not found: {c.train_dir}")
    _need(bool(c.out), "an output run folder (out) is required")
    _need(not Path(c.out).exists() or Path(c.out).is_dir(), f"out {c.out} exists and is not a folder")
    _need(c.val_dir is None or Path(c.val_dir).is_dir(), f"validation folder not found: {c.val_dir}")
    _need(_is_num(c.val_fraction) and 0 <= c.val_fraction < 1, f"val_fraction must be in [0, 1), got {c.val_fraction}")
    _need(
        not (c.val_dir and c.val_fraction),
        "give either a validation folder (val_dir) or a validation fraction, not both",
    )
    if c.group_regex is not None:
        try:
            _need(re.compile(c.group_regex).groups >= 1, f"group_regex {c.group_regex!r} needs a group (...)")
        except re.error as e:
            raise TrainConfigError(f"group_regex {c.group_regex!r} is not a valid regular expression: {e}") from e


def _check_optimisation(c: TrainConfig) -> None:
    _need(c.trainable in TRAINABLE, f"unknown trainable {c.trainable!r}; choose one of {TRAINABLE}")
    _need(_is_int(c.epochs) and c.epochs >= 1, f"epochs must be a positive integer, got {c.epochs!r}")
    _need(_is_int(c.batch_size) and c.batch_size >= 1, f"batch_size must be a positive integer, got {c.batch_size!r}")
    _need(_is_num(c.lr) and c.lr > 0, f"lr must be a positive number, got {c.lr!r}")
    _need(_is_int(c.patch) and c.patch >= 8 and c.patch % 8 == 0, f"patch must be a multiple of 8, got {c.patch!r}")
    _need(c.optimizer in OPTIMIZERS, f"unknown optimizer {c.optimizer!r}; choose one of {OPTIMIZERS}")
    _need(_is_num(c.weight_decay) and c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay!r}")
    _need(c.scheduler in SCHEDULERS, f"unknown scheduler {c.scheduler!r}; choose one of {SCHEDULERS}")
    _need(_is_int(c.warmup) and c.warmup >= 0, f"warmup must be a number of steps >= 0, got {c.warmup!r}")
    _need(
        c.init is None or Path(c.init).exists() or Path(c.init + ".safetensors").exists(),
        f"init checkpoint not found: {c.init}",
    )
    _need(c.width is None or (_is_num(c.width) and 0 < c.width <= 16), f"width must be in (0, 16], got {c.width!r}")
    _need(
        _is_num(c.stain_jitter) and 0 <= c.stain_jitter < 1,
        f"stain_jitter must be in [0, 1), got {c.stain_jitter!r}",
    )


def _check_run(c: TrainConfig) -> None:
    _need(
        c.samples_per_epoch is None or (_is_int(c.samples_per_epoch) and c.samples_per_epoch >= 1),
        f"samples_per_epoch must be a positive integer, got {c.samples_per_epoch!r}",
    )
    _need(_is_int(c.seed), f"seed must be an integer, got {c.seed!r}")
    _need(
        c.num_workers is None or (_is_int(c.num_workers) and c.num_workers >= 0),
        f"num_workers must be >= 0, got {c.num_workers!r}",
    )
    _need(
        c.model_mpp is None or (_is_num(c.model_mpp) and c.model_mpp > 0),
        f"model_mpp must be positive, got {c.model_mpp!r}",
    )
    _need(
        c.select_metric in SELECT_METRICS,
        f"unknown select_metric {c.select_metric!r}; choose one of {SELECT_METRICS}",
    )
    _need(_is_int(c.val_every) and c.val_every >= 1, f"val_every must be a positive integer, got {c.val_every!r}")
    _need(
        c.max_steps is None or (_is_int(c.max_steps) and c.max_steps >= 1),
        f"max_steps must be positive, got {c.max_steps!r}",
    )
    _need(_is_int(c.opening_radius) and c.opening_radius >= 0, f"opening_radius must be >= 0, got {c.opening_radius!r}")
    _need(c.ema is None or (_is_num(c.ema) and 0 < c.ema < 1), f"ema must be a decay in (0, 1), got {c.ema!r}")
    _need(_is_num(c.keep_weight) and c.keep_weight >= 0, f"keep_weight must be >= 0, got {c.keep_weight!r}")
    _need(_is_num(c.keep_types) and 0 <= c.keep_types <= 1, f"keep_types must be between 0 and 1, got {c.keep_types!r}")
    _need(_is_num(c.border_weight) and c.border_weight >= 0, f"border_weight must be >= 0, got {c.border_weight!r}")
    _need(_is_num(c.border_sigma) and c.border_sigma > 0, f"border_sigma must be > 0 px, got {c.border_sigma!r}")


def _check_points(c: TrainConfig) -> None:
    for folder in [*(c.points_dirs or []), *([c.points_val] if c.points_val else [])]:
        _need(Path(folder).is_dir(), f"point-labelled folder not found: {folder}")
    _need(
        c.points_mpp is None or (_is_num(c.points_mpp) and c.points_mpp > 0),
        f"points_mpp must be positive, got {c.points_mpp!r}",
    )
    _need(
        c.tumor_classes is None or (bool(c.tumor_classes) and all(_is_int(v) for v in c.tumor_classes)),
        f"tumor_classes must be a list of integer point classes, got {c.tumor_classes!r}",
    )
    _need(_is_num(c.points_share) and 0 < c.points_share < 1, f"points_share must be in (0, 1), got {c.points_share}")
    _need(
        c.teacher is None or Path(c.teacher).exists() or Path(c.teacher + ".safetensors").exists(),
        f"teacher checkpoint not found: {c.teacher}",
    )
