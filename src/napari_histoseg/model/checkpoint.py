"""Checkpoints: weights as ``<stem>.safetensors`` plus a JSON model card ``<stem>.json`` beside them.

Loading never unpickles anything: weights are read with safetensors only, after checking the file's sha256
against the card, and every tensor name and shape is checked against the architecture the card describes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import struct
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..analysis.stain_stats import LabStats
from ..classes import CLASS_COLORS, CLASS_NAMES
from ..fileio import atomic_write
from .resunetpp import ModelConfig, ModelConfigError, ResUNetPlusPlus

logger = logging.getLogger(__name__)

ARCHITECTURE = "resunetpp"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
#: Fine-tuning refuses a checkpoint that covers less than this share of the model's parameter values.
MIN_MATCHED_FRACTION = 0.5

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class ModelCard:
    """What a checkpoint is: architecture, classes, input convention, provenance. JSON-serialisable."""

    architecture: str
    config: dict[str, Any]
    classes: list[dict[str, Any]]
    mpp: float | None
    normalization: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    created: str = ""
    name: str = ""
    description: str = ""
    #: Added to the logits before the softmax at inference (one value per class; empty = nothing added). A model
    #: trained with class weights w_c records -log(w_c) here ("logit adjustment", Menon et al. 2021): the weighted
    #: loss shifts its logits by +log(w_c) towards the rare classes, and removing that shift makes the decision
    #: follow the classes' real frequencies again (fewer false cells, higher precision).
    logit_bias: list[float] = field(default_factory=list)
    #: LAB colour statistics of the training tissue (``stain.LabStats.to_dict()``); inference maps a slide's
    #: colours onto them (Reinhard stain normalisation). Empty: the model takes slides as they are.
    stain_target: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``json.dump``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on missing or unknown keys."""
        if not isinstance(d, dict):
            raise ValueError(f"a model card must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown = sorted(set(d) - names)
        missing = sorted(required - set(d))
        if unknown or missing:
            raise ValueError(f"model card has unknown keys {unknown} / lacks required keys {missing}")
        if d["mpp"] is not None and not (isinstance(d["mpp"], (int, float)) and d["mpp"] > 0):
            raise ValueError(f"model card mpp must be a positive number or null, got {d['mpp']!r}")
        bias = d.get("logit_bias", [])
        n_classes = len(d["classes"]) if isinstance(d["classes"], list) else None
        if not isinstance(bias, list) or (bias and len(bias) != n_classes):
            raise ValueError(f"model card logit_bias must be a list of one number per class or empty, got {bias!r}")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bias):
            raise ValueError(f"model card logit_bias must hold finite numbers, got {bias!r}")
        if d.get("stain_target"):
            try:
                LabStats.from_dict(d["stain_target"])
            except (ValueError, TypeError) as err:
                raise ValueError(f"stain_target: {err}") from err
        return cls(**d)

    @property
    def stain_stats(self) -> LabStats | None:
        """The training data's colour statistics (``stain_target``), or None when the card has none."""
        return LabStats.from_dict(self.stain_target) if self.stain_target else None

    @property
    def model_config(self) -> ModelConfig:
        """The architecture config as a :class:`ModelConfig`."""
        return ModelConfig.from_dict(self.config)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in sorted(self.classes, key=lambda c: c["index"])]


def default_classes(num_classes: int) -> list[dict[str, Any]]:
    """The plugin's classes (names and colours) for a model with ``num_classes`` outputs."""
    classes = []
    for i in range(num_classes):
        name = CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class {i}"
        color = CLASS_COLORS[i].tolist() if i < len(CLASS_COLORS) else [255, 255, 255]
        classes.append({"index": i, "name": name, "color": color})
    return classes


def card_for(model: ResUNetPlusPlus, *, mpp: float | None, **extra: Any) -> ModelCard:
    """A card describing ``model``; ``extra`` sets other fields (classes, training, metrics, name, ...)."""
    config = model.config
    values: dict[str, Any] = {
        "architecture": ARCHITECTURE,
        "config": config.to_dict(),
        "classes": default_classes(config.num_classes),
        "mpp": None if mpp is None else float(mpp),
        "normalization": {"mean": list(config.mean), "std": list(config.std), "input_range": "0-1 RGB"},
    }
    unknown = sorted(set(extra) - {f.name for f in fields(ModelCard)})
    if unknown:
        raise TypeError(f"card_for() got unknown card fields {unknown}")
    values.update(extra)
    card = ModelCard(**values)
    if len(card.classes) != config.num_classes:
        raise ValueError(f"card lists {len(card.classes)} classes but the model has {config.num_classes} outputs")
    if card.logit_bias and len(card.logit_bias) != config.num_classes:
        raise ValueError(f"card has {len(card.logit_bias)} logit biases but the model has {config.num_classes} outputs")
    return card


def weights_path(path: str | os.PathLike[str]) -> Path:
    """``<stem>.safetensors`` for a weights path, a card path, or a stem (the suffix is appended)."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return path
    if path.suffix == CARD_SUFFIX:
        return path.with_suffix(WEIGHTS_SUFFIX)
    return path.with_name(path.name + WEIGHTS_SUFFIX)


def card_path(weights_path: str | os.PathLike[str]) -> Path:
    """``<stem>.json`` next to ``<stem>.safetensors``."""
    return Path(weights_path).with_suffix(CARD_SUFFIX)


def _versions() -> dict[str, str]:
    from .. import __version__

    return {"napari_histoseg": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(
    path: str | os.PathLike[str], model: ResUNetPlusPlus, card: ModelCard, *, half: bool = False
) -> Path:
    """Write ``<path>.safetensors`` and its JSON card atomically; returns the weights path.

    ``half`` stores floating-point tensors as float16 (half the size; loading casts back to float32).
    The card's ``sha256``, ``versions`` and (if empty) ``created`` are filled in.
    """
    target = weights_path(path)
    if card.architecture != ARCHITECTURE:
        raise ValueError(f"card architecture is {card.architecture!r}, expected {ARCHITECTURE!r}")
    if card.config != model.config.to_dict():
        raise ValueError("card config does not describe the model being saved; build the card with card_for()")
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[name] = tensor.contiguous()
    metadata = {"architecture": ARCHITECTURE, "config": json.dumps(card.config), "format": "pt"}
    data = st_save(state, metadata=metadata)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data)
    card.sha256 = hashlib.sha256(data).hexdigest()
    card.versions = {**card.versions, **_versions()}
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_card(target, card)
    return target


def write_card(path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``card`` atomically as the JSON card of the checkpoint at ``path`` (its weights are not touched, so
    the card's sha256 must already be theirs); returns the card's path."""
    target = card_path(weights_path(path))
    atomic_write(target, (json.dumps(card.to_dict(), indent=2) + "\n").encode())
    return target


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the model card of a checkpoint, given its ``.safetensors`` or ``.json`` path."""
    path = Path(path)
    cpath = card_path(path)
    if not cpath.is_file():
        raise CheckpointError(cpath, f"model card not found (expected next to {_resolve(path).name})")
    try:
        d = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(cpath, f"model card is not valid JSON ({e})") from e
    try:
        return ModelCard.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(cpath, f"invalid model card: {e}") from e


def _read_bytes(path: Path) -> bytes:
    """The raw weights file, refusing pickles before anything else is looked at."""
    if not path.is_file():
        raise CheckpointError(path, "weights file not found")
    data = path.read_bytes()
    if data.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            path,
            "this is a pickled PyTorch file (.pt/.pth), not safetensors; it is not loaded because unpickling "
            "can run arbitrary code. Convert it where you trust it, e.g. "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')",
        )
    return data


def _parse_weights(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of safetensors bytes, with a clear error for truncation and corruption."""
    if len(data) < 8:
        raise CheckpointError(path, f"not a safetensors file: only {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER, len(data) - 8):
        raise CheckpointError(path, "not a safetensors file, or truncated: header length exceeds the file")
    try:
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.pop("__metadata__", None) or {}
        data_len = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(path, f"corrupt safetensors header ({type(e).__name__}: {e})") from e
    if 8 + header_len + data_len > len(data):
        raise CheckpointError(
            path, f"truncated: tensors need {8 + header_len + data_len} bytes, the file has {len(data)}"
        )
    try:
        return st_load(data), metadata
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"corrupt safetensors file ({e})") from e


def _check_sha(path: Path, data: bytes, card: ModelCard) -> None:
    if not card.sha256:
        raise CheckpointError(path, "model card has no sha256; cannot verify the weights (pass verify=False)")
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.sha256:
        raise CheckpointError(
            path,
            f"sha256 mismatch: file is {actual[:16]}..., card says {card.sha256[:16]}... "
            "(weights changed or corrupted after saving, or the card belongs to another file)",
        )


def _check_architecture(path: Path, card: ModelCard, metadata: dict[str, str] | None = None) -> ModelConfig:
    if card.architecture != ARCHITECTURE:
        raise CheckpointError(
            card_path(path),
            f"architecture {card.architecture!r} is not supported (expected {ARCHITECTURE!r})",
        )
    if metadata and metadata.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise CheckpointError(path, f"weights are of architecture {metadata['architecture']!r}, not {ARCHITECTURE!r}")
    try:
        config = card.model_config
    except ModelConfigError as e:
        raise CheckpointError(card_path(path), f"invalid model config in card: {e}") from e
    if metadata and "config" in metadata and json.loads(metadata["config"]) != card.config:
        raise CheckpointError(path, f"weights were saved with another config than {card_path(path).name} describes")
    if len(card.classes) != config.num_classes:
        raise CheckpointError(
            card_path(path), f"card lists {len(card.classes)} classes but its config has {config.num_classes}"
        )
    return config


def _resolve(path: str | os.PathLike[str]) -> Path:
    """The weights file for a weights or card path; an existing file of any other suffix is taken as is."""
    path = Path(path)
    if path.suffix != CARD_SUFFIX and path.is_file():
        return path
    return weights_path(path)


def _open(path: str | os.PathLike[str], verify: bool) -> tuple[Path, ModelCard, ModelConfig, dict[str, torch.Tensor]]:
    wpath = _resolve(path)
    data = _read_bytes(wpath)
    card = read_card(wpath)
    state, metadata = _parse_weights(wpath, data)  # first, so a truncated file is called truncated
    if verify:
        _check_sha(wpath, data, card)
    return wpath, card, _check_architecture(wpath, card, metadata), state


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", verify: bool = True
) -> tuple[ResUNetPlusPlus, ModelCard]:
    """Build the model a checkpoint describes and load its weights (float32, eval mode, on ``device``).

    Checks the sha256 (unless ``verify=False``), the architecture, and that every tensor name and shape
    matches; anything wrong raises :class:`CheckpointError`. Never unpickles.
    """
    wpath, card, config, state = _open(path, verify)
    model = ResUNetPlusPlus(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            wpath,
            f"weights do not match the architecture in the card: {len(missing)} missing "
            f"({_preview(missing)}), {len(unexpected)} unexpected ({_preview(unexpected)})",
        )
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(wpath, f"weights do not match the config in the card: {_preview(bad)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.to(device).eval(), card


def load_matching_weights(model: ResUNetPlusPlus, path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Initialise ``model`` from a checkpoint for fine-tuning: copy every tensor whose name and shape match.

    Typical use: a 4-class model from a 3-class checkpoint loads everything but the final 1x1 conv.
    Returns ``{"loaded": [...], "skipped": [...]}`` (skipped: model tensors left as initialised).
    Raises :class:`CheckpointError` for another architecture, or when the matching tensors hold less than
    half of the model's parameter values (e.g. other widths: build the model with the checkpoint's widths,
    see :func:`finetune_config`).
    """
    wpath, _, ckpt_config, state = _open(path, verify=True)
    target = model.state_dict()
    loaded, skipped = [], []
    matched_values = 0
    for name, tensor in target.items():
        source = state.get(name)
        if source is not None and source.shape == tensor.shape:
            loaded.append(name)
            if tensor.is_floating_point():
                matched_values += tensor.numel()
        else:
            skipped.append(name)
    total = sum(t.numel() for t in target.values() if t.is_floating_point())
    if matched_values < MIN_MATCHED_FRACTION * total:
        raise CheckpointError(
            wpath,
            f"only {matched_values / max(total, 1):.0%} of the model's weights match this checkpoint "
            f"(checkpoint widths {list(ckpt_config.widths)}, bridge {ckpt_config.bridge}; model widths "
            f"{list(model.config.widths)}, bridge {model.config.bridge}); fine-tune a model with the "
            "checkpoint's widths or train from scratch",
        )
    with torch.no_grad():
        for name in loaded:
            target[name].copy_(state[name].to(target[name].dtype))
    if skipped:
        logger.info("%s: %d tensors loaded, %d left initialised: %s", wpath, len(loaded), len(skipped), skipped)
    return {"loaded": loaded, "skipped": skipped}


def finetune_config(path: str | os.PathLike[str], *, num_classes: int | None = None) -> ModelConfig:
    """The checkpoint's architecture with another number of classes: the model to build for ``--init``."""
    wpath = _resolve(path)
    config = _check_architecture(wpath, read_card(wpath))
    if num_classes is None or num_classes == config.num_classes:
        return config
    return ModelConfig.from_dict({**config.to_dict(), "num_classes": num_classes})


def _preview(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "") if items else "none"
