"""The files of a run folder: the resumable training state (no pickle) and the per-epoch metrics CSV."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..analysis.metrics import SCALAR_METRICS
from ..classes import CLASS_NAMES
from ..fileio import atomic_write
from .config import RESUMABLE_CHANGES, TrainConfigError

STATE_FORMAT = "napari-histoseg-train-state/1"
BEST, LAST, STATE = "best", "last", "state.safetensors"
DICE_FIELDS = tuple(f"dice_{name.replace(' ', '_').replace('-', '_')}" for name in CLASS_NAMES)
#: Scores on a point-labelled validation folder (``point_training.validate_points``), empty without one.
POINT_METRICS = ("points_detection_f1", "points_type_f1_tumor", "points_cellularity_mae", "points_cellularity_r")
CSV_FIELDS = (
    "epoch",
    "global_step",
    "train_loss",
    "lr",
    "seconds",
    "val_loss",
    "score",
    *SCALAR_METRICS,
    *DICE_FIELDS,
    *POINT_METRICS,
    "is_best",
)


def _cpu_copies(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict,
    averaged: torch.nn.Module | None = None,
) -> None:
    """Weights, optimizer tensors, the weight average (``averaged``, as ``ema/...``) and RNG state as
    safetensors; everything else as JSON metadata. No pickle."""
    tensors = _cpu_copies("model/", model)
    if averaged is not None:
        tensors.update(_cpu_copies("ema/", averaged))
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    info = {
        **info,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars, "indices": list(map(int, opt["state"]))},
    }
    data = st_save(tensors, metadata={"format": STATE_FORMAT, "state": json.dumps(info)})
    atomic_write(path, data)


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {STATE_FORMAT!r}")
        return tensors, json.loads(metadata["state"])
    except Exception as e:  # noqa: BLE001 -- any decoding problem means the same thing to the user
        raise TrainConfigError(f"{path}: cannot resume from this state file ({type(e).__name__}: {e})") from e


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict[str, Any]] = {i: {} for i in info["indices"]}
    for name, tensor in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state[int(index)][key] = tensor
    for index, entries in info["scalars"].items():
        state[int(index)].update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def config_differences(saved: dict, current: dict, defaults: dict | None = None) -> list[str]:
    """The options (other than those a resume may change) that differ between a run's saved config and the
    current one; an option the saved config lacks (added to histoseg since the run started) counts as its default."""
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    keys = sorted((set(saved) | set(current)) - RESUMABLE_CHANGES)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def csv_row(
    epoch: int, global_step: int, train_loss: float, lr: float, seconds: float, val: dict, is_best: bool, score: float
) -> dict:
    row: dict[str, Any] = {
        "epoch": epoch,
        "global_step": global_step,
        "train_loss": f"{train_loss:.6g}",
        "lr": f"{lr:.6g}",
        "seconds": f"{seconds:.2f}",
        "score": "" if not math.isfinite(score) else f"{score:.6g}",
        "is_best": int(is_best),
    }
    for key in ("val_loss", *SCALAR_METRICS, *POINT_METRICS):
        value = val.get(key)
        row[key] = "" if value is None or not math.isfinite(value) else f"{value:.6g}"
    for name, value in zip(DICE_FIELDS, val.get("dice", [None] * 4), strict=False):
        row[name] = "" if value is None or not math.isfinite(value) else f"{value:.6g}"
    return row


def read_metrics_csv(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``RUN_DIR/metrics.csv`` (empty when there is none)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


@contextlib.contextmanager
def hold_interrupts():
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
