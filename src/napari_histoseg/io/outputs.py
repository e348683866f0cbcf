"""Output safety: histoseg replaces or deletes only what it wrote itself, and never its input.

- A label store is recognised by its own marks: a ``zarr.json`` whose attributes hold ``histoseg``, or the
  finished-block folder; it is removed entry by entry, and only when it holds nothing else.
- An output folder of images records the files histoseg wrote in a small manifest; a file there that the
  manifest does not list is someone else's and is never replaced.
- An output may never be, or contain, an input.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

DONE_DIR = ".histoseg_done"
#: The manifest of an output folder of images: the names of the files histoseg wrote there.
MANIFEST = ".histoseg_outputs.json"


class OutputError(ValueError):
    """An output path that would destroy or mix with something histoseg did not write (names the path)."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output path that is an input or a folder holding one (overwriting it would delete it)."""
    target = _resolved(out)
    for item in inputs:
        source = _resolved(item)
        if target == source:
            raise OutputError(f"{out}: the output is the input itself; choose another --out")
        if target in source.parents:
            raise OutputError(f"{out}: the output folder holds the input {item}; choose another --out")


def _store_attrs(path: Path) -> dict | None:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None


def is_histoseg_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a label store histoseg wrote (complete or not)."""
    path = Path(path)
    if not path.is_dir():
        return False
    attrs = _store_attrs(path)
    return (attrs is not None and "histoseg" in attrs) or (path / DONE_DIR).is_dir()


def _store_entries(path: Path) -> set[str]:
    """Names a histoseg store may hold at its top level."""
    attrs = _store_attrs(path) or {}
    levels = int((attrs.get("histoseg") or {}).get("n_levels") or 0)
    names = {"zarr.json", DONE_DIR, "probabilities"} | {str(k) for k in range(max(levels, 16))}
    return names


def remove_store(path: str | os.PathLike) -> None:
    """Delete a histoseg label store; refuse (naming the path) anything that is not one or holds foreign files."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{path} exists and is not a histoseg output store; --overwrite replaces only those")
    if not is_histoseg_store(path):
        raise OutputError(f"{path} exists and is not a histoseg output store; --overwrite replaces only those")
    known = _store_entries(path)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in known)
    if foreign:
        raise OutputError(
            f"{path} is a histoseg store but also holds {', '.join(foreign[:5])}; not removed (move those first)"
        )
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    path.rmdir()


def remove_label_image(path: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> None:
    """Delete an existing zarr label image before it is rewritten: refuse one that ``sources`` (the data about to
    be written) live in, a folder that is not a zarr label image, and one holding foreign files."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    check_not_input(path, sources)
    if is_histoseg_store(path):
        remove_store(path)
        return
    if path.is_symlink() or not (path / "zarr.json").is_file():
        raise OutputError(f"{path} exists and is not a zarr label image; not replaced (choose another name)")
    known = _store_entries(path)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in known)
    if foreign:
        raise OutputError(f"{path} holds {', '.join(foreign[:5])} besides a label image; not replaced")
    shutil.rmtree(path)


def read_manifest(folder: str | os.PathLike) -> set[str]:
    """Names of the files histoseg wrote in an output folder (empty when it has no manifest)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"{path}: corrupt output manifest ({err}); remove it to start over") from err
    return {str(n) for n in names}


def write_manifest(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Record (atomically) the files histoseg wrote in an output folder."""
    from ..fileio import atomic_write

    atomic_write(Path(folder) / MANIFEST, json.dumps({"files": sorted(set(names))}, indent=1).encode())


def check_replaceable(paths: Iterable[Path], owned: set[str]) -> None:
    """Refuse when an output file to be written exists and histoseg did not write it (not in ``owned``)."""
    for path in paths:
        if (path.exists() or path.is_symlink()) and path.name not in owned:
            raise OutputError(f"{path} exists and was not written by histoseg; not replaced (move it or pick --out)")
