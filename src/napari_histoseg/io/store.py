"""Where predicted labels go: an OME-NGFF zarr store (slides) or an in-memory array (small images).

The zarr store is written block by block. Each block writes whole chunks of every pyramid level (block sizes are
multiples of the chunk sizes), so blocks written by different threads, processes or machines never share a chunk.
A finished block leaves a small marker file with its class counts: a rerun resumes by skipping marked blocks, and a
cancelled run leaves a valid store whose unfinished blocks read as background. Every chunk is written, empty ones
too, so a finished block whose chunk files are gone is found (:meth:`LabelStore.missing_blocks`): opening such a
store fails, and resuming it redoes those blocks.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import CLASS_COLORS, CLASS_NAMES
from ..fileio import atomic_write
from .outputs import DONE_DIR, remove_store

log = logging.getLogger(__name__)

MAX_CHUNK = 512
#: Runtime configuration of every array of a store: empty chunks are written, so none is missing by design.
_ARRAY_CONFIG = {"write_empty_chunks": True}


class StoreError(ValueError):
    """An output store that cannot be created, resumed or read."""


def level_chunks(block: int, n_levels: int) -> list[int]:
    """Chunk size of each pyramid level, chosen so that every block covers whole chunks at every level."""
    return [max(1, min(MAX_CHUNK, block >> k)) for k in range(n_levels)]


def pyramid_depth(shape: tuple[int, int], block: int, min_side: int = 256, min_block: int = 32) -> int:
    """How many levels the label pyramid gets: halve until the image is small or blocks get tiny."""
    levels = 1
    while max(shape) >> levels >= min_side and block >> levels >= min_block and block % (1 << levels) == 0:
        levels += 1
    return levels


def ome_label_metadata(n_levels: int, scale: tuple[float, float] = (1.0, 1.0), unit: str | None = None) -> dict:
    """OME-NGFF 0.5 ``ome`` attributes of a class-label pyramid (levels "0", "1", ... halving each time)."""
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for axis in axes:
            axis["unit"] = unit
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [scale[0] * (1 << k), scale[1] * (1 << k)]}],
        }
        for k in range(n_levels)
    ]
    colors = [
        {"label-value": i, "rgba": [*CLASS_COLORS[i].tolist(), 0 if i == 0 else 255]} for i in range(len(CLASS_NAMES))
    ]
    properties = [{"label-value": i, "class": name} for i, name in enumerate(CLASS_NAMES)]
    return {
        "version": "0.5",
        "multiscales": [{"name": "labels", "axes": axes, "datasets": datasets}],
        "image-label": {"colors": colors, "properties": properties},
    }


def _block_labels(core: tuple[int, int, int, int], labels: np.ndarray | None) -> np.ndarray:
    """A block's labels; ``None`` stands for all background."""
    y0, x0, y1, x1 = core
    return np.zeros((y1 - y0, x1 - x0), np.uint8) if labels is None else labels


def _block_counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)].tolist()


class ArraySink:
    """Collects block results into an in-memory label array (for images that fit in memory)."""

    def __init__(self, shape: tuple[int, int], *, probabilities: bool = False):
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.probabilities = np.zeros((*shape, len(CLASS_NAMES)), np.float32) if probabilities else None
        self._done: dict[tuple[int, int], list[int]] = {}

    def done_blocks(self) -> dict[tuple[int, int], list[int]]:
        return dict(self._done)

    def write_block(
        self,
        index: tuple[int, int],
        core: tuple[int, int, int, int],
        labels: np.ndarray | None,
        probs: np.ndarray | None = None,
    ) -> None:
        """Store a finished block; ``labels=None`` means all background."""
        y0, x0, y1, x1 = core
        labels = _block_labels(core, labels)
        self.labels[y0:y1, x0:x1] = labels
        if self.probabilities is not None and probs is not None:
            self.probabilities[y0:y1, x0:x1] = probs
        self._done[index] = _block_counts(labels)


class LabelStore:
    """A zarr v3 store of uint8 class labels with an OME-NGFF multiscale pyramid and a record of finished blocks."""

    def __init__(self, path: Path, group: Any):
        self.path = Path(path)
        self.group = group
        attrs = group.attrs.asdict()
        self.info: dict = attrs["histoseg"]
        self.levels = [group[str(k)].with_config(_ARRAY_CONFIG) for k in range(self.info["n_levels"])]
        probabilities = group.get("probabilities", None)
        self.probabilities = None if probabilities is None else probabilities.with_config(_ARRAY_CONFIG)

    # -- creation / opening -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shape: tuple[int, int],
        *,
        block: int,
        settings: dict,
        scale: tuple[float, float] = (1.0, 1.0),
        unit: str | None = None,
        probabilities: bool = False,
        overwrite: bool = False,
        extra: dict | None = None,
    ) -> LabelStore:
        """Create the store, or reopen it to resume when it was made with the same ``settings``."""
        import zarr

        path = Path(path)
        if path.exists() and not overwrite:
            try:
                store = cls.open(path, mode="r+", verify=False)
            except StoreError as err:
                raise StoreError(
                    f"{path} exists and is not a histoseg output store; choose another --out or remove it"
                ) from err
            if store.info.get("settings") != settings or tuple(store.info["shape"]) != tuple(shape):
                raise StoreError(
                    f"{path} holds a run with other settings or another image; "
                    "use another output path or overwrite it (resume needs identical settings)"
                )
            store.repair()
            return store
        remove_store(path)  # only a histoseg store; anything else is refused, naming the path
        _check_parent(path)

        n_levels = pyramid_depth(shape, block)
        chunks = level_chunks(block, n_levels)
        group = zarr.open_group(str(path), mode="w")
        (path / DONE_DIR).mkdir(exist_ok=True)  # the store's mark, first: a half-created store is still ours
        for k in range(n_levels):
            level_shape = (-(-shape[0] // (1 << k)), -(-shape[1] // (1 << k)))
            group.create_array(
                str(k),
                shape=level_shape,
                chunks=(chunks[k], chunks[k]),
                dtype="uint8",
                fill_value=0,
                dimension_names=("y", "x"),
                config=_ARRAY_CONFIG,
            )
        if probabilities:
            group.create_array(
                "probabilities",
                shape=(*shape, len(CLASS_NAMES)),
                chunks=(chunks[0], chunks[0], len(CLASS_NAMES)),
                dtype="uint8",
                fill_value=0,
                dimension_names=("y", "x", "c"),
                config=_ARRAY_CONFIG,
            )
        group.attrs.update(
            {
                "ome": ome_label_metadata(n_levels, scale, unit),
                "histoseg": {
                    "shape": list(shape),
                    "block": block,
                    "n_levels": n_levels,
                    "settings": settings,
                    "complete": False,
                    "all_chunks_written": True,
                    **(extra or {}),
                },
            }
        )
        return cls(path, group)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, verify: bool = True) -> LabelStore:
        """Open an existing output store; with ``verify``, a finished store must still hold every block it lists."""
        import zarr

        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode=mode)
            if "histoseg" not in group.attrs:
                raise StoreError(f"{path} is a zarr store but not a histoseg output (no 'histoseg' attributes)")
            store = cls(path, group)
        except StoreError:
            raise
        except Exception as err:  # zarr raises several types for "not a store"
            raise StoreError(f"cannot open {path} as a histoseg output store: {err}") from err
        if verify and store.info.get("complete"):
            missing = store.missing_blocks()
            if missing:
                raise StoreError(
                    f"{path}: {len(missing)} finished block(s) lost their data (first: block {missing[0][0]}, "
                    f"{missing[0][1]}); rerun the same predict command to redo them"
                )
        return store

    # -- block records ------------------------------------------------------------------------------------
    def _marker(self, index: tuple[int, int]) -> Path:
        return self.path / DONE_DIR / f"{index[0]}_{index[1]}.json"

    def done_blocks(self) -> dict[tuple[int, int], list[int]]:
        """Finished blocks and their class counts (a corrupt marker raises :class:`StoreError` naming it)."""
        return {index: record["counts"] for index, record in self._records().items()}

    def _records(self) -> dict[tuple[int, int], dict]:
        records = {}
        folder = self.path / DONE_DIR
        if folder.is_dir():
            for marker in folder.glob("*.json"):
                try:
                    by, bx = (int(v) for v in marker.stem.split("_"))
                    record = json.loads(marker.read_text())
                    if len(record["core"]) != 4 or len(record["counts"]) != len(CLASS_NAMES):
                        raise ValueError("wrong number of values")
                except (ValueError, KeyError, TypeError) as err:
                    raise StoreError(
                        f"{marker}: corrupt block marker ({err}); delete it and rerun to redo that block"
                    ) from err
                records[(by, bx)] = record
        return records

    def _chunk_files(self, core: list[int]) -> list[Path]:
        """The chunk files of every array that a block's core covers."""
        y0, x0, y1, x1 = core
        files = []
        arrays = [(k, level) for k, level in enumerate(self.levels)]
        if self.probabilities is not None:
            arrays.append((0, self.probabilities))
        for k, array in arrays:
            step = 1 << k
            cy, cx = array.chunks[0], array.chunks[1]
            ly0, lx0 = y0 // step, x0 // step
            ly1, lx1 = ly0 + -(-(y1 - y0) // step), lx0 + -(-(x1 - x0) // step)
            extra = (0,) * (len(array.shape) - 2)
            for i in range(ly0 // cy, -(-ly1 // cy)):
                for j in range(lx0 // cx, -(-lx1 // cx)):
                    key = array.metadata.encode_chunk_key((i, j, *extra))
                    files.append(self.path / array.path / key)
        return files

    def missing_blocks(self) -> list[tuple[int, int]]:
        """Blocks recorded as finished whose chunk files are not all there (a stat per chunk; none for old stores
        written before every chunk was kept)."""
        if not self.info.get("all_chunks_written"):
            return []
        records = self._records()
        return sorted(i for i, r in records.items() if not all(f.is_file() for f in self._chunk_files(r["core"])))

    def repair(self) -> list[tuple[int, int]]:
        """Before resuming: forget the finished blocks whose data are gone, so they are redone, and mark the store
        incomplete if any were. Returns those blocks."""
        missing = self.missing_blocks()
        if missing:
            log.warning("%s: %d finished block(s) lost their data; redoing them", self.path, len(missing))
            for index in missing:
                self._marker(index).unlink(missing_ok=True)
            info = dict(self.info)
            info.update({"complete": False, "summary": None})
            self.group.attrs["histoseg"] = info
            self.info = info
        return missing

    def write_block(
        self,
        index: tuple[int, int],
        core: tuple[int, int, int, int],
        labels: np.ndarray | None,
        probs: np.ndarray | None = None,
    ) -> None:
        """Write a finished block (all pyramid levels) and then record it. ``labels=None``: all background."""
        y0, x0, y1, x1 = core
        # All background is written too: a resumed or overwritten region may hold old data.
        labels = _block_labels(core, labels)
        counts = _block_counts(labels)
        for k, level in enumerate(self.levels):
            step = 1 << k
            level[
                y0 // step : y0 // step + -(-(y1 - y0) // step),
                x0 // step : x0 // step + -(-(x1 - x0) // step),
            ] = labels[::step, ::step]
        if self.probabilities is not None:  # zeros (unknown) for a skipped block, as its chunks were before
            if probs is None:
                self.probabilities[y0:y1, x0:x1] = 0
            else:
                self.probabilities[y0:y1, x0:x1] = np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)
        atomic_write(self._marker(index), json.dumps({"core": list(core), "counts": counts}).encode())

    def finalize(self, summary: dict) -> None:
        """Mark the store complete and keep the run summary in its attributes."""
        info = dict(self.info)
        info.update({"complete": True, "summary": summary})
        self.group.attrs["histoseg"] = info
        self.info = info


def _check_parent(path: Path) -> None:
    """A store's folder must be creatable: no file in the way among its parents."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{path}: {parent} is a file, not a folder")
            return
