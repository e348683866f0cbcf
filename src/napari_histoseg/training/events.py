"""The progress events a training run yields, and its result."""

from __future__ import annotations

from dataclasses import dataclass, field


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


TrainEvent = TrainStart | StepEvent | EpochEvent | TrainResult
