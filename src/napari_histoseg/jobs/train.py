"""The train job: ``training.train.train`` with its events turned into progress (steps over all epochs).

Each event keeps its training event as ``detail``: the Train widget plots each epoch (``EpochEvent``), the CLI
prints the run's start and each epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..training.config import TrainConfig
from ..training.train import EpochEvent, StepEvent, TrainResult, TrainStart, run_training, train
from .progress import Job, Progress, format_duration, relay


class TrainingProgress:
    """Training events as :class:`~.progress.Progress`: optimizer steps done of all the run's steps, with an ETA
    from the steps of this session."""

    def __init__(self) -> None:
        self.total = 0
        self.offset = 0
        self.t0 = time.monotonic()
        self.first_step: int | None = None
        self.done = 0

    def __call__(self, event: Any) -> Progress | None:
        if isinstance(event, TrainStart):
            self.total = event.steps_per_epoch * (event.epochs - event.start_epoch + 1)
            self.offset = event.steps_per_epoch * (event.start_epoch - 1)
            return Progress(0, self.total, "training", f"epoch {event.start_epoch}/{event.epochs}", "step", None, event)
        if isinstance(event, StepEvent):
            self.done = event.global_step - self.offset
            if self.first_step is None:
                self.first_step, self.t0 = self.done, time.monotonic()
            text = f"epoch {event.epoch}, step {event.step}/{event.steps_per_epoch}, loss {event.loss:.4f}"
            rate = (self.done - self.first_step) / max(time.monotonic() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 and self.total else None
            if eta is not None:
                text += f", about {format_duration(eta)} left"
            return Progress(self.done, self.total, "training", text, "step", eta, event)
        if isinstance(event, EpochEvent):
            text = f"epoch {event.epoch}/{event.epochs}: loss {event.train_loss:.4f}, score {event.score:.3f}"
            return Progress(self.done, self.total, "validating", text, "step", None, event)
        return None


def train_job(
    config: TrainConfig, *, resume: bool = False, should_stop: Callable[[], bool] | None = None
) -> Job[TrainResult]:
    """Train (or fine-tune) as ``config`` says; yields progress, returns the ``TrainResult``. ``should_stop`` is
    asked before each step: the run then ends after that step, keeping its best checkpoint."""
    return (yield from relay(train(config, resume=resume, should_stop=should_stop), TrainingProgress()))


def run_train(
    config: TrainConfig, *, resume: bool = False, on_progress: Callable[[Progress], None] | None = None
) -> TrainResult:
    """Train synchronously (the CLI): ``training.train.run_training`` (the first Ctrl-C stops after the current
    step), its events passed on as progress."""
    convert = TrainingProgress()

    def report(event) -> None:
        progress = convert(event)
        if progress is not None and on_progress is not None:
            on_progress(progress)

    return run_training(config, resume=resume, on_event=report)
