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
        "import sys, napari_histoseg, napari_histoseg.io.slide, napari_histoseg.analysis.tissue; "
        "print(sorted(m for m in ('napari', 'torch', 'qtpy', 'magicgui') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# Run in a fresh interpreter: every module of the package outside ``_napari`` imported with the GUI stack blocked.
_IMPORT_ALL_WITHOUT_GUI = """
import importlib, importlib.abc, sys
from pathlib import Path

GUI = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt", "app_model"}


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in GUI:
            raise ImportError(f"{name} is blocked: a core module must not import the GUI stack")


sys.meta_path.insert(0, Blocked())
import napari_histoseg

root = Path(napari_histoseg.__file__).parent
failed = []
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[0] == "_napari" or parts[-1] == "__main__":  # __main__ runs the command line
        continue
    name = ".".join(("napari_histoseg", *parts)).removesuffix(".__init__")
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_core_module_imports_without_napari_or_qt() -> None:
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL_WITHOUT_GUI], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", "core modules that need napari or Qt:\n" + result.stdout
