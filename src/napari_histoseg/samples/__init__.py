"""Sample data shipped inside the package (see LICENSE.md here)."""

from __future__ import annotations

import shutil
import tempfile
from importlib.resources import as_file, files
from pathlib import Path

SAMPLE_FILE = "cmu-1-small-region.svs"


def sample_path(name: str = SAMPLE_FILE) -> Path:
    """Path of a shipped sample file that stays valid while the slide is read lazily.

    A normal install gives the file's own path; a zipped package is extracted once to a temporary folder.
    """
    resource = files(__name__) / name
    if isinstance(resource, Path):
        return resource
    target = Path(tempfile.gettempdir()) / "napari-histoseg-samples" / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with as_file(resource) as extracted:
            shutil.copyfile(extracted, target)
    return target
