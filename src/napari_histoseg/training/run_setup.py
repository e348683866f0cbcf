"""Everything a training run needs before its first step: the run folder checked, the data loaded and resampled,
the model built (or restored to resume), its optimiser, and the patch loader."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..analysis.stain_stats import LabStats
from ..classes import CLASS_NAMES, NUM_CLASSES
from ..engine.allocator import tune_cpu_allocator
from ..engine.device import select_device
from ..fileio import atomic_write
from ..model.checkpoint import ModelCard, finetune_config, load_matching_weights, read_card
from ..model.resunetpp import ModelConfig, ResUNetPlusPlus, build_model
from .class_weights import weights_from_counts
from .config import TrainConfig, TrainConfigError
from .corrections import ReviewedImage, prepare_samples
from .optim import make_optimizer, trainable_parameters
from .patch_datasets import PatchDataset, default_num_workers, make_loader
from .point_training import PointData, load_point_data, patch_share_weights
from .run_folder import LAST, STATE, config_differences, load_state, read_metrics_csv, restore_optimizer, write_csv
from .samples import load_pairs, pooled_stain_stats
from .splits import split_data


@dataclass
class TrainData:
    """The samples of a run on the model's grid, with what was derived from them."""

    train: list
    val: list
    counts: list[int]
    class_weights: np.ndarray
    model_mpp: float | None
    stain: LabStats | None
    review: list[ReviewedImage]


@dataclass
class Progress:
    """Where a run stands: restored when resuming, else at its start."""

    start_epoch: int = 1
    global_step: int = 0
    best_score: float = float("-inf")
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


@dataclass
class RunSetup:
    """A run ready for its first step (see :func:`setup_run`)."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    data: TrainData
    model: ResUNetPlusPlus
    init_report: dict | None
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    plateau: Any
    progress: Progress
    point_data: PointData | None
    loader: Any
    memory_format: torch.memory_format
    freeze_norm: bool
    threads: int  # torch's thread count before the run (restored after it)

    @property
    def evaluated(self) -> torch.nn.Module:
        """What is validated and saved: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE


def check_run_folder(config: TrainConfig, resume: bool) -> Path:
    """The run folder: it must hold a resumable run with the same options when resuming, and no run otherwise."""
    run_dir = Path(config.out)
    state_path, config_path = run_dir / STATE, run_dir / "config.json"
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
    return run_dir


def load_train_data(config: TrainConfig) -> tuple[TrainData, ModelCard | None]:
    """The pairs split, loaded, resampled to the model's resolution, with class weights and the stain target."""
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
    data = TrainData(train_samples, val_samples, counts, class_weights, model_mpp, stain, review)
    return data, init_card


def build_start_model(config: TrainConfig) -> tuple[ResUNetPlusPlus, dict | None]:
    """The model a run starts from: new, or ``config.init``'s weights (with a report of what was loaded)."""
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


def _start_run_folder(config: TrainConfig, run_dir: Path, data: TrainData) -> None:
    atomic_write(run_dir / "config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
    summary = {
        "images": len(data.train),
        "pixels_per_class": data.counts,
        "classes": list(CLASS_NAMES),
        "class_weights": [float(w) for w in data.class_weights],
    }
    atomic_write(run_dir / "class_weights.json", (json.dumps(summary, indent=2) + "\n").encode())
    write_csv(run_dir / "metrics.csv", [])


def _restore_progress(run_dir: Path, info: dict, tensors: dict, optimizer, plateau) -> Progress:
    restore_optimizer(optimizer, tensors, info["optimizer"])
    if plateau is not None and info.get("plateau"):
        plateau.load_state_dict(info["plateau"])
    torch.set_rng_state(tensors["rng/torch"])
    rows = [r for r in read_metrics_csv(run_dir) if int(r["epoch"]) <= info["epoch"]]
    write_csv(run_dir / "metrics.csv", rows)  # drop rows of an epoch whose state was never saved
    best_score = info["best_score"] if info["best_score"] is not None else float("-inf")
    return Progress(
        info["epoch"] + 1, info["global_step"], best_score, info["best_epoch"], info["best_metrics"],
        info.get("history", []),
    )  # fmt: skip


def _make_patch_loader(config: TrainConfig, data: TrainData, point_data: PointData | None):
    train_samples, sample_weights = data.train, None
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
    return loader, workers


def setup_run(config: TrainConfig, resume: bool) -> RunSetup:
    """Check the folder, load the data, build or restore the model and its optimiser, and make the loader."""
    run_dir = check_run_folder(config, resume)
    device = select_device(config.device)
    data, _ = load_train_data(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    if resume:
        tensors, info = load_state(run_dir / STATE)
        model = build_model(ModelConfig.from_dict(info["model_config"]))
        model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
        init_report = info.get("init_report")
    else:
        model, init_report = build_start_model(config)
        _start_run_folder(config, run_dir, data)
    # channels_last only on CUDA: on CPU, oneDNN's 1x1-convolution weight gradient (torch 2.13, AVX-512)
    # crashes with channels_last at narrow widths, and the layout gains little there.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cpu":
        tune_cpu_allocator()
    model = model.to(device).to(memory_format=memory_format)
    optimizer = make_optimizer(config, trainable_parameters(model, config.trainable))
    ema = None
    if config.ema is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        if resume:
            ema.load_state_dict({k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")})
    plateau = None
    if config.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    progress = _restore_progress(run_dir, info, tensors, optimizer, plateau) if resume else Progress()
    del tensors
    point_data = None
    if config.points_dirs or config.points_val:
        point_data = load_point_data(config, data.model_mpp, data.stain, run_dir / "point_targets")
    loader, workers = _make_patch_loader(config, data, point_data)
    threads = torch.get_num_threads()
    if device.type == "cpu" and workers > 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(threads, cpus - workers)))
    # Frozen at a starting model's statistics when fine-tuning; from scratch they must be learnt.
    freeze_norm = config.freeze_norm if config.freeze_norm is not None else config.init is not None
    return RunSetup(
        config, run_dir, device, data, model, init_report, optimizer, ema, plateau, progress, point_data, loader,
        memory_format, freeze_norm, threads,
    )  # fmt: skip
