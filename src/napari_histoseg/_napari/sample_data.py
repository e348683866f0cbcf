"""Sample data: the CC0 CMU-1 small-region H&E slide shipped inside the package."""

from __future__ import annotations

import shutil
import tempfile
from importlib.resources import as_file, files
from pathlib import Path

from napari_histoseg._napari.reader import LayerData, slide_layer_data
from napari_histoseg.io.slide import open_slide

SAMPLE_FILE = "cmu-1-small-region.svs"


def sample_path(name: str = SAMPLE_FILE) -> Path:
    """Path of a shipped sample file that stays valid while the slide is read lazily.

    A normal install gives the file's own path; a zipped package is extracted once to a temporary folder.
    """
    resource = files("napari_histoseg") / "samples" / name
    if isinstance(resource, Path):
        return resource
    target = Path(tempfile.gettempdir()) / "napari-histoseg-samples" / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with as_file(resource) as extracted:
            shutil.copyfile(extracted, target)
    return target


def cmu1_small_region() -> list[LayerData]:
    """CMU-1 small region (Aperio SVS, H&E, 20x, 0.499 um/px), opened through the same code as the reader."""
    return slide_layer_data(open_slide(sample_path()))
