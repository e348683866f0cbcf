"""The one progress event every job yields, and the runner that drives a job without a GUI.

A job is a generator: it yields :class:`Progress` events and *returns* its outcome. The CLI drives it with
:func:`drive`; the napari widgets run the same generator in a thread worker and show ``done``/``total`` and
``message``. ``detail`` carries the core event a progress event came from, for a front end that shows more
(the Train widget plots each epoch); nothing needs to ask an event which attributes it has.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Job = Generator["Progress", None, T]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (blocks, images, steps) of one ``phase``; ``message`` says it in words."""

    done: int
    total: int
    phase: str
    message: str = ""
    unit: str = ""
    eta_seconds: float | None = None
    detail: Any = None

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


def relay(gen: Generator[Any, None, T], convert: Callable[[Any], Progress | None]) -> Job[T]:
    """Pass a core generator's events on as :class:`Progress` (``convert``: None drops one); return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        progress = convert(event)
        if progress is not None:
            yield progress


def drive(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a job to its end synchronously (CLI, tests, scripts); ``on_progress`` sees every event."""
    try:
        while True:
            event = next(job)
            if on_progress is not None:
                on_progress(event)
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()


def format_duration(seconds: float) -> str:
    """A rough human duration: "40 s", "2 min 10 s", "1 h 05 min"."""
    s = int(max(0, round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


def of_inference(event: Any) -> Progress | None:
    """A segmentation event: a block finished (InferenceProgress), or the run's labels written (its result)."""
    from ..engine.infer import InferenceProgress, InferenceResult

    if isinstance(event, InferenceProgress):
        text = f"{event.blocks_done}/{event.blocks_total} blocks, {event.windows_per_second:.1f} tiles/s"
        if event.eta_seconds is not None:
            text += f", about {format_duration(event.eta_seconds)} left"
        return Progress(
            event.blocks_done, event.blocks_total, "segmenting", text, "block", event.eta_seconds, detail=event
        )
    if isinstance(event, InferenceResult):
        return Progress(event.blocks_total, event.blocks_total, "writing", "writing the result", "block", 0.0, event)
    return None


def of_cells(event: Any) -> Progress | None:
    """A cell-counting event (``analysis.cells.CellProgress``); the result is not an event."""
    from ..analysis.cells import CellProgress

    if isinstance(event, CellProgress):
        return Progress(
            event.blocks_done, event.blocks_total, "counting cells", f"{event.cells:,} cells", "block", detail=event
        )
    return None
