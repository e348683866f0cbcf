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
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator

import torch

from ..engine.device import training_autocast
from ..engine.stain_transform import normalizer_for
from ..fileio import json_safe
from ..model.checkpoint import card_for, save_checkpoint
from ..model.resunetpp import count_parameters
from .config import TrainConfig, TrainConfigError
from .corrections import correction_loss
from .events import EpochEvent, StepEvent, TrainEvent, TrainResult, TrainStart
from .loss import weighted_cross_entropy
from .optim import freeze_batchnorm, logit_adjustment, lr_factor
from .point_training import validate_points
from .review import collapse_problems, review_metrics, write_review_log
from .run_folder import BEST, LAST, csv_row, hold_interrupts, read_metrics_csv, save_state, write_csv
from .run_setup import RunSetup, build_start_model, setup_run
from .samples import pooled_stain_stats
from .selection import selection_score
from .splits import split_data
from .validation import validate_model

__all__ = [
    "EpochEvent", "StepEvent", "TrainConfig", "TrainConfigError", "TrainResult", "TrainStart", "read_metrics_csv",
    "run_training", "selection_score", "split_data", "train", "validate_model",
]  # fmt: skip

log = logging.getLogger(__name__)


class _Run:
    """The state of a run between its steps: the best and last checkpoints, the step count, the review figures."""

    def __init__(self, setup: RunSetup, resume: bool):
        self.setup, self.config, self.resume = setup, setup.config, resume
        data = setup.data
        self.weights_t = torch.as_tensor(data.class_weights, device=setup.device)
        self.logit_bias = logit_adjustment(data.class_weights)
        self.bias_t = torch.as_tensor(self.logit_bias, dtype=torch.float32, device=setup.device)
        self.stain_target = data.stain.to_dict() if data.stain is not None else {}
        # Validation sees what `histoseg evaluate` sees: the val images' pooled colours mapped onto the training data's.
        self.val_normalize = normalizer_for(pooled_stain_stats(data.val), data.stain) if data.val else None
        self.steps_per_epoch = len(setup.loader)
        self.total_steps = self.steps_per_epoch * self.config.epochs
        self.progress = setup.progress
        self.epochs_done = self.progress.start_epoch - 1
        run_dir = setup.run_dir
        self.last_path = str(run_dir / f"{LAST}.safetensors") if self.epochs_done else None
        self.best_path = str(run_dir / f"{BEST}.safetensors") if self.progress.best_epoch else None
        if resume and data.review and (run_dir / f"{BEST}.safetensors").is_file():
            self.best_path = str(run_dir / f"{BEST}.safetensors")  # the starting model, kept as best at epoch 0
        self.review_before: dict = {}
        self.review_reference: list = []
        self.review_epochs: list[dict] = []
        self.teacher: torch.nn.Module | None = None
        self.cancelled = self.stopped_early = False
        self.lr = setup.optimizer.param_groups[0]["lr"]

    def card_training(self) -> dict:
        config, data = self.config, self.setup.data
        return {
            "config": config.to_dict(),
            "train_dir": config.train_dir,
            "val_dir": config.val_dir,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "val_names": [s.name for s in data.val] if config.val_dir is None else None,
            "pixels_per_class": data.counts,
            "class_weights": [float(w) for w in data.class_weights],
            "init": self.setup.init_report,
            "select_metric": config.select_metric,
            "point_sets": self.setup.point_data.describe() if self.setup.point_data is not None else None,
        }

    def save_model(self, stem: str, epoch: int, metrics: dict, score: float) -> str:
        training = {
            **self.card_training(),
            "epoch": epoch,
            "epochs": self.config.epochs,
            "global_step": self.progress.global_step,
            "score": json_safe(score),
        }
        card = card_for(
            self.setup.evaluated,
            mpp=self.setup.data.model_mpp,
            training=training,
            metrics=json_safe(metrics),
            name=f"{self.setup.run_dir.name}/{stem}",
            logit_bias=self.logit_bias,
            stain_target=self.stain_target,
        )
        return str(save_checkpoint(self.setup.run_dir / stem, self.setup.evaluated, card))

    def start_event(self) -> TrainStart:
        s, data = self.setup, self.setup.data
        return TrainStart(
            run_dir=str(s.run_dir),
            device=str(s.device),
            train_images=len(data.train),
            val_images=len(data.val),
            class_weights=[float(w) for w in data.class_weights],
            pixels_per_class=list(data.counts),
            parameters=count_parameters(s.model),
            steps_per_epoch=self.steps_per_epoch,
            start_epoch=self.progress.start_epoch,
            epochs=self.config.epochs,
            init_report=s.init_report,
        )

    def start_review(self) -> None:
        """Corrected pairs: the starting model's figures ("before", and the first "best" to beat), and a frozen copy
        of it that holds the unreviewed pixels where they were (``corrections.distillation_loss``)."""
        s, config = self.setup, self.config
        review = s.data.review
        if not review:
            return
        start_model = s.evaluated if not self.resume else build_start_model(config)[0].to(s.device)
        self.teacher = copy.deepcopy(start_model).to(memory_format=s.memory_format).eval().requires_grad_(False)
        self.review_before, self.review_reference = review_metrics(
            start_model, review, s.device, self.logit_bias, batch_size=max(1, config.batch_size), amp=config.amp,
            opening_radius=config.opening_radius,
        )  # fmt: skip
        write_review_log(s.run_dir, self.review_before, self.review_epochs)
        if self.resume:
            return
        base = dict(self.review_before)
        if s.data.val:
            base.update(self.validate_masks())
        self.progress.best_score, self.progress.best_metrics = selection_score(base, config.select_metric), base
        with hold_interrupts():
            self.best_path = self.save_model(BEST, 0, base, self.progress.best_score)

    def autocast(self) -> contextlib.AbstractContextManager:
        return training_autocast(self.setup.device) if self.config.amp else contextlib.nullcontext()

    def step_loss(self, images: torch.Tensor, labels: torch.Tensor, border: list) -> torch.Tensor:
        s, config = self.setup, self.config
        with self.autocast():
            logits = s.model(images)
        if self.teacher is not None:
            with torch.no_grad(), self.autocast():
                teacher_logits = self.teacher(images)
            return correction_loss(
                logits.float(), labels, self.weights_t, teacher_logits.float(), config.keep_weight, config.keep_types,
                self.bias_t,
            )  # fmt: skip
        border_t = border[0].to(s.device, non_blocking=True) if border else None
        return weighted_cross_entropy(logits.float(), labels, self.weights_t, border_t)

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool] | None) -> Generator[StepEvent, None, float]:
        """One epoch of steps; returns the mean training loss (sets ``cancelled`` / ``stopped_early``)."""
        s, config, progress = self.setup, self.config, self.progress
        s.loader.dataset.set_epoch(epoch)
        s.model.train()
        if s.freeze_norm:
            freeze_batchnorm(s.model)
        t_epoch = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for step, (images, labels, *border) in enumerate(s.loader, start=1):
            if should_stop is not None and should_stop():
                self.cancelled = True
                break
            if s.plateau is None or progress.global_step < config.warmup:
                for group in s.optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, progress.global_step, self.total_steps)
            self.lr = s.optimizer.param_groups[0]["lr"]
            images = images.to(s.device, non_blocking=True).contiguous(memory_format=s.memory_format)
            loss = self.step_loss(images, labels.to(s.device, non_blocking=True), border)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            if s.ema is not None:
                s.ema.update_parameters(s.model)
            progress.global_step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss became {value} at epoch {epoch}, step {step}; try a lower learning rate "
                    f"(--lr, now {config.lr})"
                )
            loss_sum += value * len(images)
            seen += len(images)
            elapsed = time.perf_counter() - t_epoch
            rate = seen / elapsed if elapsed > 0 else 0.0
            yield StepEvent(epoch, step, self.steps_per_epoch, progress.global_step, value, self.lr, rate)
            if config.max_steps is not None and progress.global_step >= config.max_steps:
                self.stopped_early = True
                break
        return loss_sum / max(seen, 1)

    def validate_masks(self) -> dict:
        s = self.setup
        return validate_model(
            s.evaluated, s.data.val, s.device, self.config, s.data.class_weights, self.logit_bias, self.val_normalize
        )

    def check_review(self, val: dict, epoch: int) -> list[str]:
        """The corrected images' figures of this epoch (into ``val``), and why it must not become best, if so."""
        s, config = self.setup, self.config
        metrics, _ = review_metrics(
            s.evaluated, s.data.review, s.device, self.logit_bias, reference=self.review_reference,
            batch_size=max(1, config.batch_size), amp=config.amp, opening_radius=config.opening_radius,
        )  # fmt: skip
        val.update(metrics)
        before = self.review_before
        val["review_before"] = {k: before.get(k) for k in ("review_agreement", "review_held_agreement")}
        self.review_epochs.append({"epoch": epoch, **metrics})
        write_review_log(s.run_dir, before, self.review_epochs)
        problems = collapse_problems(metrics, before)
        for problem in problems:
            log.warning("epoch %d not kept as best: %s", epoch, problem)
            warnings.warn(f"epoch {epoch} not kept as best: {problem}", stacklevel=2)
        return problems

    def validate(self, epoch: int) -> tuple[dict, float, bool]:
        """This epoch's validation metrics (empty when not validated), its score, and whether it may become best."""
        s, config = self.setup, self.config
        if not (epoch % config.val_every == 0 or epoch == config.epochs or self.stopped_early):
            return {}, float("nan"), True
        val = self.validate_masks() if s.data.val else {}
        problems = self.check_review(val, epoch) if s.data.review else []
        if s.point_data is not None and s.point_data.val:
            card = card_for(
                s.evaluated, mpp=s.data.model_mpp, logit_bias=self.logit_bias, stain_target=self.stain_target
            )
            val.update(validate_points(s.evaluated, card, s.point_data, s.device, config))
        score = selection_score(val, config.select_metric)
        if s.plateau is not None and math.isfinite(score) and self.progress.global_step >= config.warmup:
            s.plateau.step(score)
        return val, score, not problems

    def finish_epoch(self, epoch: int, train_loss: float, t_epoch: float) -> EpochEvent:
        """Validate, pick the best, write the epoch's files; the :class:`EpochEvent`."""
        progress, config = self.progress, self.config
        t_val = time.perf_counter()
        val, score, allowed = self.validate(epoch)
        validation_seconds = time.perf_counter() - t_val
        is_best = (
            bool(val) and allowed and (self.best_path is None or (math.isfinite(score) and score > progress.best_score))
        )
        if is_best:
            progress.best_score = score if math.isfinite(score) else float("-inf")
            progress.best_epoch, progress.best_metrics = epoch, val
        seconds = time.perf_counter() - t_epoch
        progress.history.append({"epoch": epoch, "train_loss": train_loss, "score": json_safe(score)})
        with hold_interrupts():
            rows = read_metrics_csv(self.setup.run_dir)
            rows.append(csv_row(epoch, progress.global_step, train_loss, self.lr, seconds, val, is_best, score))
            write_csv(self.setup.run_dir / "metrics.csv", rows)
            if is_best:
                self.best_path = self.save_model(BEST, epoch, val, score)
            self.last_path = self.save_model(LAST, epoch, val, score)
            self.save_state(epoch)
        self.epochs_done = epoch
        return EpochEvent(
            epoch=epoch, epochs=config.epochs, train_loss=train_loss, val=val, score=score,
            best_score=progress.best_score, best_epoch=progress.best_epoch, is_best=is_best, seconds=seconds,
            validation_seconds=validation_seconds, lr=self.lr, best_checkpoint=self.best_path,
            last_checkpoint=self.last_path,
        )  # fmt: skip

    def save_state(self, epoch: int) -> None:
        s, progress = self.setup, self.progress
        best_score = progress.best_score
        info = {
            "epoch": epoch,
            "global_step": progress.global_step,
            "best_score": best_score if math.isfinite(best_score) else None,
            "best_epoch": progress.best_epoch,
            "best_metrics": json_safe(progress.best_metrics),
            "model_config": s.model.config.to_dict(),
            "plateau": s.plateau.state_dict() if s.plateau is not None else None,
            "init_report": s.init_report,
            "history": progress.history,
        }
        save_state(s.state_path, s.model, s.optimizer, info, averaged=s.ema)

    def result(self) -> TrainResult:
        progress = self.progress
        return TrainResult(
            run_dir=str(self.setup.run_dir), best_checkpoint=self.best_path, last_checkpoint=self.last_path,
            best_metrics=progress.best_metrics, best_epoch=progress.best_epoch, best_score=progress.best_score,
            epochs_done=self.epochs_done, cancelled=self.cancelled, stopped_early=self.stopped_early,
            history=progress.history,
        )  # fmt: skip


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train as configured; yields a :class:`TrainStart`, :class:`StepEvent` per step, :class:`EpochEvent` per
    epoch, and finally the :class:`TrainResult` (also its return value).

    ``resume`` continues the run in ``config.out`` from its last finished epoch (only ``epochs``, ``device``,
    ``num_workers``, ``max_steps`` and ``val_every`` may differ). ``should_stop`` is polled before every step:
    when it returns True the run ends with ``cancelled=True``. Closing the generator (``.close()``, a napari
    worker's ``quit()``) stops it too; either way the best and last checkpoints of the finished epochs and the
    state to resume from stay valid.
    """
    config = config.validated()
    setup = setup_run(config, resume)
    run = _Run(setup, resume)
    yield run.start_event()
    try:
        run.start_review()
        for epoch in range(setup.progress.start_epoch, config.epochs + 1):
            t_epoch = time.perf_counter()
            train_loss = yield from run.train_epoch(epoch, should_stop)
            if run.cancelled:
                break
            yield run.finish_epoch(epoch, train_loss, t_epoch)
            if run.stopped_early:
                break
    finally:
        torch.set_num_threads(setup.threads)
    result = run.result()
    yield result
    return result


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
