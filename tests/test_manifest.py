"""The npe2 manifest: valid, discoverable, and every python_name it lists imports."""

from __future__ import annotations

import fnmatch
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManager, PluginManifest

MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)


def test_manifest_is_installed_and_discoverable(manifest) -> None:
    pm = PluginManager()
    pm.discover()
    assert pm.get_manifest("napari-histoseg").name == manifest.name == "napari-histoseg"


def test_every_python_name_imports(manifest) -> None:
    commands = manifest.contributions.commands or []
    assert commands
    broken = []
    for command in commands:
        module_name, _, attribute = command.python_name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            broken.append(f"{command.id} -> {command.python_name}: {exc}")
            continue
        if not callable(target):
            broken.append(f"{command.id} -> {command.python_name}: not callable")
    assert not broken, "napari.yaml lists commands that do not import:\n" + "\n".join(broken)


def test_reader_patterns_cover_slide_formats(manifest) -> None:
    [reader] = [r for r in manifest.contributions.readers if r.command == "napari-histoseg.get_reader"]
    names = ["a.svs", "a.tif", "a.tiff", "a.ome.tif", "a.ome.tiff", "a.btf", "a.ndpi"]
    for name in names:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in reader.filename_patterns), name
    assert not reader.accepts_directories


def test_sample_data_listed(manifest) -> None:
    keys = {sample.key for sample in manifest.contributions.sample_data}
    assert "cmu1_small_region" in keys


def test_core_imports_neither_napari_nor_torch() -> None:
    code = (
        "import sys, napari_histoseg, napari_histoseg.io.slide, napari_histoseg.io.tissue; "
        "print(sorted(m for m in ('napari', 'torch', 'qtpy', 'magicgui') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
