"""Train a ResUNet++ on folder pairs: a generator of progress events, a synchronous runner, resumable runs.

A run lives in one folder ``RUN_DIR``::

    config.json                 the TrainConfig (what the run was asked to do)
    class_weights.json          pixels per class over the training set and the weights N / N_c
    metrics.csv                 one row per epoch: training loss, learning rate, validation metrics
    best.safetensors/.json      the checkpoint with the best validation score (model card with its metrics)
    last.safetensors/.json      the checkpoint of the last finished epoch
    state.safetensors           everything needed to resume, in one file: weights, optimizer tensors, RNG
                                state; the rest (epoch, step, best score, scheduler) as JSON in its metadata

Every file is written atomically (a temporary file, then a rename), and Ctrl-C is held back while a
checkpoint is being written, so stopping at any moment leaves valid checkpoints. A run resumes at the
start of the epoch after the last finished one; a stop in the middle of an epoch loses that epoch's steps.

Selection ("best"): ``select_metric="score"`` is the mean of the object-level detection F1, the tumor type F1
and the mean pixel F1 (Dice) over the three cell classes, all on the validation set after the opening; it
rewards finding cells, typing tumor cells, and drawing them, equally. Any single metric can be chosen instead,
or ``val_loss`` (lower is better).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..analysis.stain_stats import LabStats
from ..classes import CLASS_NAMES, NUM_CLASSES
from ..engine.allocator import tune_cpu_allocator
from ..engine.device import select_device, training_autocast
from ..engine.stain_transform import ReinhardNormalizer, normalizer_for
from ..fileio import atomic_write, json_safe
from ..model.checkpoint import card_for, finetune_config, load_matching_weights, read_card, save_checkpoint
from ..model.resunetpp import ModelConfig, ResUNetPlusPlus, build_model, count_parameters
from .config import (
    DEFAULT_VAL_FRACTION,
    TrainConfig,
    TrainConfigError,
)
from .corrections import collapse_problems, correction_loss, prepare_samples, review_metrics, write_review_log
from .data import find_pairs, load_pairs, pooled_stain_stats, split_by_image, weights_from_counts
from .dataset import PatchDataset, default_num_workers, make_loader
from .evaluate import EvalResult, evaluate_model
from .loss import weighted_cross_entropy
from .point_training import load_point_data, patch_share_weights, validate_points
from .run_folder import (
    BEST,
    LAST,
    STATE,
    config_differences,
    csv_row,
    load_state,
    read_metrics_csv,
    restore_optimizer,
    save_state,
    write_csv,
)

log = logging.getLogger(__name__)


@dataclass
class TrainStart:
    """The first event: what is about to be trained."""

    run_dir: str
    device: str
    train_images: int
    val_images: int
    class_weights: list[float]
    pixels_per_class: list[int]
    parameters: int
    steps_per_epoch: int
    start_epoch: int  # the first epoch to run (> 1 when resuming)
    epochs: int
    init_report: dict | None = None


@dataclass
class StepEvent:
    """One optimizer step. ``samples_per_second`` is averaged over the epoch so far."""

    epoch: int
    step: int
    steps_per_epoch: int
    global_step: int
    loss: float
    lr: float
    samples_per_second: float


@dataclass
class EpochEvent:
    """One finished epoch (``val`` is empty and ``score`` NaN when this epoch was not validated)."""

    epoch: int
    epochs: int
    train_loss: float
    val: dict
    score: float
    best_score: float
    best_epoch: int
    is_best: bool
    seconds: float
    validation_seconds: float
    lr: float
    best_checkpoint: str | None
    last_checkpoint: str


@dataclass
class TrainResult:
    """The end of a run (also after a stop: ``cancelled`` or ``stopped_early``)."""

    run_dir: str
    best_checkpoint: str | None
    last_checkpoint: str | None
    best_metrics: dict
    best_epoch: int
    best_score: float
    epochs_done: int
    cancelled: bool = False
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


# --- small helpers ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _hold_interrupts():
    """Delay Ctrl-C (SIGINT) until the block ends, so files written together stay consistent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def _mean_finite(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def selection_score(metrics: dict, select_metric: str = "score") -> float:
    """The number "best" maximises (``val_loss`` is negated); NaN when undefined. See the module docstring.

    With a point-labelled validation folder, ``score`` is the mean of the colour-mask score and the point score
    (the mean of the points' tumor type F1 and 1 - the per-image cellularity error).
    """
    if select_metric == "score":
        score = _mean_finite(metrics.get(k, float("nan")) for k in ("detection_f1", "type_f1_tumor", "mean_f1"))
        if "points_type_f1_tumor" in metrics:
            mae = metrics.get("points_cellularity_mae")
            points = _mean_finite([metrics["points_type_f1_tumor"], None if mae is None else 1 - mae])
            score = _mean_finite([score, points])
        if "review_score" in metrics:  # corrected pairs: agreement with the corrections, little change elsewhere
            score = _mean_finite([score, metrics["review_score"]])
        return score
    value = metrics.get(select_metric)
    if value is None or not math.isfinite(value):
        return float("nan")
    return -float(value) if select_metric == "val_loss" else float(value)


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


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    wd = config.weight_decay
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=wd)


def _lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based): warm-up, then the schedule."""
    if config.warmup and step < config.warmup:
        return (step + 1) / config.warmup
    if config.scheduler != "cosine":
        return 1.0
    span = max(1, total_steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _build_model(config: TrainConfig) -> tuple[ResUNetPlusPlus, dict | None]:
    torch.manual_seed(config.seed)
    if config.init is None:
        return build_model(ModelConfig.scaled(config.width or 1.0)), None
    if config.width is None:
        model_config = finetune_config(config.init, num_classes=NUM_CLASSES)
    else:
        model_config = ModelConfig.scaled(config.width)
    model = build_model(model_config)
    report = load_matching_weights(model, config.init)  # CheckpointError when too little matches
    return model, {"checkpoint": config.init, "loaded": len(report["loaded"]), "skipped": report["skipped"]}


# --- the loop --------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TrainStart | StepEvent | EpochEvent | TrainResult, None, TrainResult]:
    """Train as configured; yields a :class:`TrainStart`, :class:`StepEvent` per step, :class:`EpochEvent` per
    epoch, and finally the :class:`TrainResult` (also its return value).

    ``resume`` continues the run in ``config.out`` from its last finished epoch (only ``epochs``, ``device``,
    ``num_workers``, ``max_steps`` and ``val_every`` may differ). ``should_stop`` is polled before every step:
    when it returns True the run ends with ``cancelled=True``. Closing the generator (``.close()``, a napari
    worker's ``quit()``) stops it too; either way the best and last checkpoints of the finished epochs and the
    state to resume from stay valid.
    """
    config = config.validated()
    run_dir = Path(config.out)
    state_path = run_dir / STATE
    config_path = run_dir / "config.json"
    if resume:
        if not state_path.is_file():
            raise TrainConfigError(f"{run_dir}: nothing to resume (no {STATE}); start a new run without --resume")
        saved = json.loads(config_path.read_text()) if config_path.is_file() else {}
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        differences = config_differences(saved, config.to_dict(), defaults)
        if differences:
            raise TrainConfigError(
                f"{config_path}: --resume needs the same options as the run (only epochs, device, num_workers, "
                f"max_steps and val_every may change); differences: {'; '.join(differences)}"
            )
    elif state_path.is_file() or (run_dir / f"{LAST}.safetensors").is_file():
        raise TrainConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out"
        )

    device = select_device(config.device)
    train_pairs, val_pairs = split_data(config)
    overlap = {p.image.resolve() for p in train_pairs} & {p.image.resolve() for p in val_pairs}
    if overlap and config.val_dir is None:
        raise TrainConfigError(f"images on both sides of the split: {sorted(map(str, overlap))[:3]}")
    train_samples, report = load_pairs(train_pairs)
    val_samples, _ = load_pairs(val_pairs)
    counts = report["pixels_per_class"]
    class_weights = weights_from_counts(counts)
    init_card = read_card(config.init) if config.init else None
    # A fine-tune keeps its starting model's resolution and stain target unless told otherwise: a new target
    # moves every colour the network sees at inference.
    model_mpp = config.model_mpp if config.model_mpp is not None else (init_card.mpp if init_card else None)
    if init_card is not None and init_card.stain_target:
        stain = LabStats.from_dict(init_card.stain_target)
    else:
        stain = pooled_stain_stats(train_samples)  # the colours inference maps slides onto
    # Pairs that record their um/px are resampled to the model's; corrected pairs teach only what was reviewed.
    train_samples, val_samples, review = prepare_samples(train_samples, val_samples, model_mpp, stain, config.seed)
    if review and init_card is not None and init_card.logit_bias:
        # Corrections fine-tune the starting model where it is: with its class weights and logit bias (exp(-bias)),
        # not the few corrected images' class frequencies, which would move every decision (and the epoch-0 "best"
        # would not be the starting model).
        class_weights = np.exp(-np.asarray(init_card.logit_bias, dtype=np.float64)).astype(np.float32)

    run_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    if resume:
        tensors, info = load_state(state_path)
        model = build_model(ModelConfig.from_dict(info["model_config"]))
        model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
        init_report = info.get("init_report")
    else:
        model, init_report = _build_model(config)
        atomic_write(config_path, (json.dumps(config.to_dict(), indent=2) + "\n").encode())
        summary = {
            "images": len(train_samples),
            "pixels_per_class": counts,
            "classes": list(CLASS_NAMES),
            "class_weights": [float(w) for w in class_weights],
        }
        atomic_write(run_dir / "class_weights.json", (json.dumps(summary, indent=2) + "\n").encode())
        write_csv(run_dir / "metrics.csv", [])

    # channels_last only on CUDA: on CPU, oneDNN's 1x1-convolution weight gradient (torch 2.13, AVX-512)
    # crashes with channels_last at narrow widths, and the layout gains little there.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cpu":
        tune_cpu_allocator()
    model = model.to(device).to(memory_format=memory_format)
    optimizer = _make_optimizer(config, model.parameters())
    ema = None
    if config.ema is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        if resume:
            ema.load_state_dict({k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")})
    # What is validated and saved: the weight average when there is one.
    evaluated = model if ema is None else ema.module
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
        if config.scheduler == "plateau"
        else None
    )
    start_epoch, global_step = 1, 0
    best_score, best_epoch, best_metrics = float("-inf"), 0, {}
    history: list[dict] = []
    if resume:
        restore_optimizer(optimizer, tensors, info["optimizer"])
        if plateau is not None and info.get("plateau"):
            plateau.load_state_dict(info["plateau"])
        torch.set_rng_state(tensors["rng/torch"])
        start_epoch, global_step = info["epoch"] + 1, info["global_step"]
        best_score = info["best_score"] if info["best_score"] is not None else float("-inf")
        best_epoch, best_metrics = info["best_epoch"], info["best_metrics"]
        rows = [r for r in read_metrics_csv(run_dir) if int(r["epoch"]) <= info["epoch"]]
        write_csv(run_dir / "metrics.csv", rows)  # drop rows of an epoch whose state was never saved
        history = info.get("history", [])
    del tensors

    point_data = (
        load_point_data(config, model_mpp, stain, run_dir / "point_targets")
        if config.points_dirs or config.points_val
        else None
    )
    sample_weights = None
    if point_data is not None and point_data.train:
        sample_weights = patch_share_weights(train_samples, point_data.train, config.points_share)
        train_samples = [*train_samples, *point_data.train]

    dataset = PatchDataset(
        train_samples,
        sample_weights=sample_weights,
        patch=config.patch,
        samples_per_epoch=config.samples_per_epoch,
        stain_jitter=config.stain_jitter,
        seed=config.seed,
        border_weight=config.border_weight,
        border_sigma=config.border_sigma,
    )
    workers = default_num_workers() if config.num_workers is None else config.num_workers
    loader = make_loader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=workers,
        seed=config.seed,
        drop_last=len(dataset) > config.batch_size,
    )
    # Frozen at a starting model's statistics when fine-tuning; from scratch they must be learnt.
    freeze_norm = config.freeze_norm if config.freeze_norm is not None else config.init is not None
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    weights_t = torch.as_tensor(class_weights, device=device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and workers > 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(threads, cpus - workers)))

    card_training = {
        "config": config.to_dict(),
        "train_dir": config.train_dir,
        "val_dir": config.val_dir,
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "val_names": [s.name for s in val_samples] if config.val_dir is None else None,
        "pixels_per_class": counts,
        "class_weights": [float(w) for w in class_weights],
        "init": init_report,
        "select_metric": config.select_metric,
        "point_sets": point_data.describe() if point_data is not None else None,
    }

    logit_bias = logit_adjustment(class_weights)
    stain_target = stain.to_dict() if stain is not None else {}
    # Validation sees what `histoseg evaluate` sees: the val images' pooled colours mapped onto the training data's.
    val_normalize = normalizer_for(pooled_stain_stats(val_samples), stain) if val_samples else None

    def save_model(stem: str, epoch: int, metrics: dict, score: float) -> str:
        training = {
            **card_training,
            "epoch": epoch,
            "epochs": config.epochs,
            "global_step": global_step,
            "score": json_safe(score),
        }
        card = card_for(
            evaluated,
            mpp=model_mpp,
            training=training,
            metrics=json_safe(metrics),
            name=f"{run_dir.name}/{stem}",
            logit_bias=logit_bias,
            stain_target=stain_target,
        )
        return str(save_checkpoint(run_dir / stem, evaluated, card))

    yield TrainStart(
        run_dir=str(run_dir),
        device=str(device),
        train_images=len(train_samples),
        val_images=len(val_samples),
        class_weights=[float(w) for w in class_weights],
        pixels_per_class=list(counts),
        parameters=count_parameters(model),
        steps_per_epoch=steps_per_epoch,
        start_epoch=start_epoch,
        epochs=config.epochs,
        init_report=init_report,
    )

    cancelled = stopped_early = False
    epochs_done = start_epoch - 1
    last_path = str(run_dir / f"{LAST}.safetensors") if epochs_done else None
    best_path = str(run_dir / f"{BEST}.safetensors") if best_epoch else None
    if resume and review and (run_dir / f"{BEST}.safetensors").is_file():
        best_path = str(run_dir / f"{BEST}.safetensors")  # the starting model, kept as best at epoch 0
    review_before: dict = {}
    review_reference: list = []
    review_epochs: list[dict] = []

    def check_review(val: dict, epoch: int) -> list[str]:
        metrics, _ = review_metrics(
            evaluated, review, device, logit_bias, reference=review_reference, batch_size=max(1, config.batch_size),
            amp=config.amp, opening_radius=config.opening_radius,
        )  # fmt: skip
        val.update(metrics)
        val["review_before"] = {k: review_before.get(k) for k in ("review_agreement", "review_held_agreement")}
        review_epochs.append({"epoch": epoch, **metrics})
        write_review_log(run_dir, review_before, review_epochs)
        problems = collapse_problems(metrics, review_before)
        for problem in problems:
            log.warning("epoch %d not kept as best: %s", epoch, problem)
            warnings.warn(f"epoch {epoch} not kept as best: {problem}", stacklevel=2)
        return problems

    teacher = None
    if review:
        # The starting model on the corrected images: the "before" figures, and the first "best" to beat; a frozen
        # copy of it holds the unreviewed pixels where they were (corrections.distillation_loss).
        start_model = evaluated if not resume else _build_model(config)[0].to(device)
        teacher = copy.deepcopy(start_model).to(memory_format=memory_format).eval().requires_grad_(False)
        review_before, review_reference = review_metrics(
            start_model, review, device, logit_bias, batch_size=max(1, config.batch_size), amp=config.amp,
            opening_radius=config.opening_radius,
        )  # fmt: skip
        write_review_log(run_dir, review_before, review_epochs)
        if not resume:
            base = dict(review_before)
            if val_samples:
                base.update(
                    validate_model(evaluated, val_samples, device, config, class_weights, logit_bias, val_normalize)
                )
            best_score, best_metrics = selection_score(base, config.select_metric), base
            with _hold_interrupts():
                best_path = save_model(BEST, 0, base, best_score)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            dataset.set_epoch(epoch)
            model.train()
            if freeze_norm:
                freeze_batchnorm(model)
            t_epoch = time.perf_counter()
            loss_sum, seen = 0.0, 0
            lr = optimizer.param_groups[0]["lr"]
            for step, (images, labels, *border) in enumerate(loader, start=1):
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
                if plateau is None or global_step < config.warmup:
                    lr = config.lr * _lr_factor(config, global_step, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                lr = optimizer.param_groups[0]["lr"]
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                with training_autocast(device) if config.amp else contextlib.nullcontext():
                    logits = model(images)
                border_t = border[0].to(device, non_blocking=True) if border else None
                if review:
                    with torch.no_grad(), training_autocast(device) if config.amp else contextlib.nullcontext():
                        teacher_logits = teacher(images)
                    loss = correction_loss(
                        logits.float(), labels, weights_t, teacher_logits.float(), config.keep_weight, config.keep_types
                    )
                else:
                    loss = weighted_cross_entropy(logits.float(), labels, weights_t, border_t)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                global_step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training loss became {value} at epoch {epoch}, step {step}; try a lower learning rate "
                        f"(--lr, now {config.lr})"
                    )
                loss_sum += value * len(images)
                seen += len(images)
                elapsed = time.perf_counter() - t_epoch
                yield StepEvent(
                    epoch, step, steps_per_epoch, global_step, value, lr, seen / elapsed if elapsed > 0 else 0.0
                )
                if config.max_steps is not None and global_step >= config.max_steps:
                    stopped_early = True
                    break
            if cancelled:
                break
            train_loss = loss_sum / max(seen, 1)
            val: dict = {}
            score = float("nan")
            t_val = time.perf_counter()
            if epoch % config.val_every == 0 or epoch == config.epochs or stopped_early:
                if val_samples:
                    val = validate_model(
                        evaluated, val_samples, device, config, class_weights, logit_bias, val_normalize
                    )
                review_problems = check_review(val, epoch) if review else []
                if point_data is not None and point_data.val:
                    card = card_for(evaluated, mpp=model_mpp, logit_bias=logit_bias, stain_target=stain_target)
                    val.update(validate_points(evaluated, card, point_data, device, config))
                score = selection_score(val, config.select_metric)
                if plateau is not None and math.isfinite(score) and global_step >= config.warmup:
                    plateau.step(score)
            validation_seconds = time.perf_counter() - t_val
            is_best = bool(val) and (best_path is None or (math.isfinite(score) and score > best_score))
            if review and val and review_problems:
                is_best = False
            if is_best:
                best_score = score if math.isfinite(score) else float("-inf")
                best_epoch, best_metrics = epoch, val
            seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch, "train_loss": train_loss, "score": json_safe(score)})
            with _hold_interrupts():
                rows = read_metrics_csv(run_dir)
                rows.append(csv_row(epoch, global_step, train_loss, lr, seconds, val, is_best, score))
                write_csv(run_dir / "metrics.csv", rows)
                if is_best:
                    best_path = save_model(BEST, epoch, val, score)
                last_path = save_model(LAST, epoch, val, score)
                save_state(
                    state_path,
                    model,
                    optimizer,
                    {
                        "epoch": epoch,
                        "global_step": global_step,
                        "best_score": best_score if math.isfinite(best_score) else None,
                        "best_epoch": best_epoch,
                        "best_metrics": json_safe(best_metrics),
                        "model_config": model.config.to_dict(),
                        "plateau": plateau.state_dict() if plateau is not None else None,
                        "init_report": init_report,
                        "history": history,
                    },
                    averaged=ema,
                )
            epochs_done = epoch
            yield EpochEvent(
                epoch=epoch,
                epochs=config.epochs,
                train_loss=train_loss,
                val=val,
                score=score,
                best_score=best_score,
                best_epoch=best_epoch,
                is_best=is_best,
                seconds=seconds,
                validation_seconds=validation_seconds,
                lr=lr,
                best_checkpoint=best_path,
                last_checkpoint=last_path,
            )
            if stopped_early:
                break
    finally:
        torch.set_num_threads(threads)
    result = TrainResult(
        run_dir=str(run_dir),
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_metrics=best_metrics,
        best_epoch=best_epoch,
        best_score=best_score,
        epochs_done=epochs_done,
        cancelled=cancelled,
        stopped_early=stopped_early,
        history=history,
    )
    yield result
    return result


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer of ``model`` in eval mode: running statistics used and kept, affine still trained."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def logit_adjustment(class_weights: Sequence[float]) -> list[float]:
    """The logit bias that undoes the weighted loss's prior shift: ``-log(w_c)`` (see ``ModelCard.logit_bias``)."""
    return [-math.log(float(w)) for w in class_weights]


def validate_model(
    model: torch.nn.Module,
    samples: list,
    device: torch.device,
    config: TrainConfig,
    class_weights: np.ndarray,
    logit_bias: Sequence[float],
    normalize: ReinhardNormalizer | None = None,
) -> dict:
    """Validation metrics of ``model`` on whole images (``evaluate.evaluate_model``), deciding the classes as the
    saved checkpoint will at inference (with its logit bias and stain normaliser); leaves the model in eval."""
    result = None
    for event in evaluate_model(
        model,
        samples,
        device=device,
        batch_size=max(1, config.batch_size),
        opening_radius=config.opening_radius,
        amp=config.amp,
        class_weights=class_weights,
        logit_bias=logit_bias,
        normalize=normalize,
    ):
        result = event
    assert isinstance(result, EvalResult)
    return result.metrics


def run_training(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_event: Callable[[TrainStart | StepEvent | EpochEvent | TrainResult], None] | None = None,
) -> TrainResult:
    """Drive :func:`train` synchronously (CLI, tests). Returns the :class:`TrainResult`.

    In the main thread, the first Ctrl-C asks the loop to stop before its next step (the result then has
    ``cancelled=True``); a second Ctrl-C raises ``KeyboardInterrupt`` at once. Either way the generator is
    closed and the checkpoints of the finished epochs stay intact.
    """
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum, frame):
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
            log.warning("stopping after the current step (Ctrl-C again to abort now)")

        previous = signal.signal(signal.SIGINT, request_stop)
    generator = train(config, resume=resume, should_stop=stop.is_set)
    result = None
    try:
        for event in generator:
            if on_event is not None:
                on_event(event)
            result = event
    finally:
        generator.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert isinstance(result, TrainResult)
    return result
