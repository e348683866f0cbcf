"""The models a napari session knows: the bundled default, checkpoint files chosen, and models just trained.

One registry per viewer, shared by the Segment and Train widgets: a model trained in one is selectable in the
other. Checkpoint paths (not the models) are remembered between launches.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from .settings import load_settings, save_settings

SECTION = "models"
MAX_RECENT = 10


@dataclass(frozen=True)
class ModelEntry:
    """A selectable model. ``path`` is the checkpoint (``.safetensors``); ``source``: default, file or trained."""

    label: str
    path: Path
    source: str


def _default_entry() -> ModelEntry | None:
    from napari_histoseg.engine.jobs import default_model_path

    path = default_model_path()
    return None if path is None else ModelEntry("bundled default model", path, "default")


class ModelRegistry:
    """Ordered models of a session; ``changed`` fires (with the new entry) when one is added."""

    changed = Signal(object)

    def __init__(self, *, remember: bool = True):
        self._entries: list[ModelEntry] = []
        self._remember = remember
        default = _default_entry()
        if default is not None:
            self._entries.append(default)
        if remember:
            for text in load_settings(SECTION).get("recent", []):
                if isinstance(text, str) and Path(text).is_file():
                    self._append(Path(text), "file", None)

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def find(self, path: str | os.PathLike) -> ModelEntry | None:
        """The entry of a checkpoint path, if known."""
        target = Path(path).resolve()
        return next((e for e in self._entries if e.path.resolve() == target), None)

    def add(self, path: str | os.PathLike, *, source: str = "file", label: str | None = None) -> ModelEntry:
        """Add a checkpoint (a trained model is listed first after the default); return its entry."""
        path = Path(path)
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        known = self.find(path) if path.exists() else None
        if known is not None and (source == known.source or source == "file"):
            return known
        if known is not None:
            self._entries.remove(known)
        entry = self._append(path, source, label)
        if self._remember and source != "default":
            recent = [str(e.path) for e in self._entries if e.source != "default"][-MAX_RECENT:]
            save_settings(SECTION, {"recent": recent})
        self.changed.emit(entry)
        return entry

    def _append(self, path: Path, source: str, label: str | None) -> ModelEntry:
        prefix = "trained: " if source == "trained" else ""
        entry = ModelEntry(label or f"{prefix}{path.stem} ({path.parent.name})", path, source)
        self._entries.append(entry)
        return entry


_REGISTRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def registry_for(viewer) -> ModelRegistry:
    """The registry shared by the widgets docked in ``viewer`` (created on first use)."""
    registry = _REGISTRIES.get(viewer)
    if registry is None:
        registry = _REGISTRIES[viewer] = ModelRegistry()
    return registry
