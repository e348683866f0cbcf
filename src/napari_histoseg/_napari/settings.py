"""Widget settings kept between napari launches: one small JSON file in the user config folder.

``NAPARI_HISTOSEG_CONFIG_DIR`` overrides the folder (tests, portable installs). A missing or damaged file means
defaults; a failed write is logged, never raised, so settings can never stop a widget from working.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from napari_histoseg.fileio import atomic_write

log = logging.getLogger(__name__)

CONFIG_ENV = "NAPARI_HISTOSEG_CONFIG_DIR"
FILE_NAME = "widgets.json"


def config_dir() -> Path:
    """The folder holding the settings file."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-histoseg", appauthor=False))


def settings_path() -> Path:
    """The settings file."""
    return config_dir() / FILE_NAME


def _read_all() -> dict[str, Any]:
    path = settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable settings file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def load_settings(section: str) -> dict[str, Any]:
    """The saved values of one widget (``section``), or ``{}``."""
    values = _read_all().get(section, {})
    return values if isinstance(values, dict) else {}


def save_settings(section: str, values: dict[str, Any]) -> None:
    """Replace the saved values of one widget; other sections are kept."""
    path = settings_path()
    data = _read_all()
    data[section] = values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=2, default=str).encode("utf-8"))
    except OSError as exc:
        log.warning("could not save widget settings to %s: %s", path, exc)


def restore(widgets: dict[str, Any], values: dict[str, Any]) -> None:
    """Set each magicgui widget in ``widgets`` to its saved value; values a widget refuses are skipped."""
    for key, widget in widgets.items():
        if key not in values:
            continue
        try:
            widget.value = values[key]
        except (ValueError, TypeError, KeyError) as exc:
            log.info("setting %s: saved value %r not applied (%s)", key, values[key], exc)


def snapshot(widgets: dict[str, Any]) -> dict[str, Any]:
    """The current values of ``widgets`` in JSON-friendly form (paths become strings)."""
    out = {}
    for key, widget in widgets.items():
        value = widget.value
        out[key] = str(value) if isinstance(value, Path) else value
    return out
