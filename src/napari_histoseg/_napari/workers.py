"""Run a core job generator in napari's ``thread_worker``: progress in the activity dock, Cancel, error reporting.

A job is a generator factory ``make(cancel: threading.Event)`` yielding progress events and *returning* its
result. Cancel sets the event: the driver stops at the next event, and a model hook
(:func:`.job_hooks.cancel_on_forward`) stops inside a block at the next network batch, so Cancel takes effect
within a batch, not a whole block. A
cancelled job returns a :class:`Cancelled`; the core's ``finally`` blocks run, so finished work stays saved.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from napari_histoseg.engine.allocator import tune_cpu_allocator
from napari_histoseg.jobs.progress import Progress

from .job_hooks import JobCancelled
from .job_meter import JobMeter, MeterReading

log = logging.getLogger(__name__)

JobFactory = Callable[[threading.Event], Generator[Any, None, Any]]


@dataclass
class Cancelled:
    """What a cancelled job returns; ``partial`` is whatever the job kept (e.g. its output store)."""

    partial: Any = None


def device_choices() -> list[str]:
    """Device names for a combo box: ``auto`` and the devices usable here."""
    from napari_histoseg.engine.device import available_devices

    return ["auto", *available_devices()]


@dataclass
class WorkerWarning:
    """A warning (or a logged warning) raised in a worker, passed to the GUI thread to be shown."""

    message: str


class _ThreadLogCapture(logging.Handler):
    """Collects this package's log warnings emitted by one thread (the worker's)."""

    def __init__(self, thread_id: int):
        super().__init__(logging.WARNING)
        self.thread_id = thread_id
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.messages.append(record.getMessage())


def _step(gen, captured: list[str]):
    """``next(gen)``, with the warnings it raises (``warnings`` and log warnings) appended to ``captured``."""
    handler = _ThreadLogCapture(threading.get_ident())
    package_log = logging.getLogger("napari_histoseg")
    package_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return next(gen)
            finally:
                captured.extend(str(w.message) for w in caught)
    finally:
        package_log.removeHandler(handler)
        captured.extend(handler.messages)


def _warnings(captured: list[str]):
    while captured:
        yield WorkerWarning(captured.pop(0))


def _drive(make: JobFactory, cancel: threading.Event, partial: Callable[[], Any], stop_on_cancel: bool = True):
    """Worker body: step the job, hand events out, stop cleanly on Cancel.

    Warnings raised in the job are yielded as :class:`WorkerWarning` events, shown by :class:`JobRunner` as napari
    notifications from the GUI thread (napari's own relay of worker warnings does not reach the user). With
    ``stop_on_cancel=False`` the job watches ``cancel`` itself and ends with its own result.
    """
    gen = make(cancel)
    captured: list[str] = []
    try:
        while True:
            try:
                event = _step(gen, captured)
            except StopIteration as stop:
                yield from _warnings(captured)
                return stop.value
            yield from _warnings(captured)
            yield event
            if stop_on_cancel and cancel.is_set():
                return Cancelled(partial())
    except JobCancelled:
        return Cancelled(partial())
    finally:
        gen.close()  # runs the core's cleanup (thread pools shut down, block in hand finished or dropped)


def describe(event: Any) -> tuple[int, int, str] | None:
    """``(done, total, text)`` for a progress bar from a job's :class:`~napari_histoseg.jobs.progress.Progress`."""
    if isinstance(event, Progress):
        return event.done, event.total, event.message
    return None


class _BarUpdater:
    """Moves a runner's napari progress bar; never backwards. Updating the bar processes Qt events, so a call can
    re-enter: a newer call shown while an older one waited wins."""

    def __init__(self, runner: JobRunner, name: str):
        self.runner, self.name = runner, name
        self.calls = self.shown = 0  # calls made, newest call shown

    def __call__(self, done: int, total: int, short: str) -> None:
        self.calls += 1
        mine = self.calls
        bar = self.runner._bar  # a local: updating the bar can process events that close it
        if bar is None:
            return
        if bar.total != total:
            bar.total = total
        if mine < self.shown or self.runner._bar is not bar:
            return  # a newer event was shown while this one waited: never move the bar back
        self.shown = mine
        target = min(done, total) if total else done
        if target != bar.n:
            bar.update(target - bar.n)  # the activity dock's bar moves on update()'s value event, not on .n
        if mine == self.shown and self.runner._bar is bar:
            bar.set_description(f"{self.runner.title} {self.name} {short}".strip())


class JobRunner:
    """One job at a time in a thread worker, with a napari progress bar and a Cancel that keeps finished work.

    ``on_event`` gets every event (main thread), ``on_done`` the result or a :class:`Cancelled`, ``on_error``
    the exception (default: a napari error notification naming ``title``); ``on_finished`` always runs last.
    With a ``meter`` (:class:`~.job_meter.JobMeter`), the bar follows its readings every half second and
    ``on_reading`` gets each one; otherwise ``describe`` turns events into ``(done, total, text)`` for the bar and
    ``on_text``. The activity dock shows only a short title (a long one pushes its bar out of view). Warnings
    raised in the job become napari warning notifications.
    """

    POLL_MS = 500

    def __init__(self, title: str):
        self.title = title
        self.worker = None
        self._cancel = threading.Event()
        self._bar: progress | None = None
        self._timer: QTimer | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        make: JobFactory,
        *,
        on_event: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        partial: Callable[[], Any] = lambda: None,
        label: str = "",
        stop_on_cancel: bool = True,
        describe: Callable[[Any], tuple[int, int, str] | None] = describe,
        meter: JobMeter | None = None,
        on_reading: Callable[[MeterReading], None] | None = None,
        on_text: Callable[[int, int, str], None] | None = None,
    ):
        """Start ``make`` in a worker thread; returns the worker."""
        if self.running:
            raise RuntimeError(f"{self.title} is already running")
        # In the GUI thread, before the worker thread exists: it then allocates from the tuned arena.
        tune_cpu_allocator()
        self._cancel = threading.Event()
        name = label if len(label) <= 24 else label[:23] + "\u2026"
        self._bar = progress(total=0, desc=f"{self.title} {name}".strip())
        worker = thread_worker(_drive, start_thread=False, ignore_errors=True)(
            make, self._cancel, partial, stop_on_cancel
        )

        show = _BarUpdater(self, name)

        def poll() -> None:
            reading = meter.reading()
            show(reading.done, reading.total, reading.short)
            if on_reading is not None:
                on_reading(reading)

        self._timer = None
        if meter is not None:
            self._timer = QTimer()
            self._timer.setInterval(self.POLL_MS)
            self._timer.timeout.connect(poll)
            self._timer.start()

        def yielded(event: Any) -> None:
            if isinstance(event, WorkerWarning):
                show_warning(f"{self.title} {label}: {event.message}".strip())
                return
            shown = describe(event) if meter is None else None
            if shown is not None:
                done, total, text = shown
                show(done, total, f"{100 * min(done, total) // total}%" if total else "")
                if on_text is not None:
                    on_text(done, total, text)
            if on_event is not None:
                on_event(event)

        worker.yielded.connect(yielded)
        if on_done is not None:
            worker.returned.connect(on_done)
        worker.errored.connect(lambda exc: self._errored(exc, on_error))
        worker.finished.connect(lambda: self._finished(on_finished))
        self.worker = worker
        worker.start()
        return worker

    def _errored(self, exc: Exception, on_error: Callable[[Exception], None] | None) -> None:
        log.info("%s failed", self.title, exc_info=exc)
        if on_error is not None:
            on_error(exc)
        else:
            show_error(f"{self.title} failed: {exc}")

    def _finished(self, on_finished: Callable[[], None] | None) -> None:
        self.worker = None
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if on_finished is not None:
            on_finished()

    def cancel(self) -> None:
        """Ask the running job to stop; finished work is kept and ``on_done`` gets a :class:`Cancelled`."""
        self._cancel.set()
