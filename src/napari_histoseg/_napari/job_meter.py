"""Progress of a running job in named phases, with a rate and an ETA from the last half minute of work.

No Qt: the worker thread counts (a model hook counts every tile the network has seen), the GUI thread reads a
:class:`MeterReading` every half second. Counting per tile rather than per 1024 px block moves the bar and the ETA
every few seconds instead of once a block.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from napari_histoseg.jobs.progress import format_duration

RATE_WINDOW_S = 30.0  # the rate (and so the ETA) follows the last half minute, not the whole run


@dataclass(frozen=True)
class MeterReading:
    """One look at a job: the phase, work done of total (0: unknown), items per second, seconds left."""

    phase: str
    done: int
    total: int
    unit: str
    rate: float | None
    eta_s: float | None

    @property
    def text(self) -> str:
        """One line for the widget, e.g. "segmenting: tile 120 of 480 · 3.1 tiles/s · about 2 min left"."""
        if not self.total:
            return f"{self.phase}..."
        parts = [f"{self.phase}: {self.unit} {min(self.done, self.total):,} of {self.total:,}"]
        if self.rate:
            parts.append(f"{self.rate:.1f} {self.unit}s/s")
        if self.eta_s is not None:
            parts.append(f"about {format_duration(self.eta_s)} left")
        return " · ".join(parts)

    @property
    def short(self) -> str:
        """A few words for the activity dock's title (its long text pushes the bar out of view)."""
        if not self.total:
            return self.phase
        return f"{self.phase} {100 * min(self.done, self.total) // self.total}%"


class JobMeter:
    """Thread-safe phase / done / total counter with a moving rate (items per second over the last 30 s)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = RATE_WINDOW_S):
        self._clock = clock
        self._window = window_s
        self._lock = threading.Lock()
        self._phase, self._unit = "starting", "tile"
        self._done = self._total = 0
        self._samples: deque[tuple[float, int]] = deque()

    def phase(self, name: str, total: int = 0, unit: str = "tile") -> None:
        """Start a phase (its counter at 0); ``total`` 0 means unknown (the bar shows activity only)."""
        with self._lock:
            self._phase, self._total, self._unit, self._done = name, int(total), unit, 0
            self._samples = deque([(self._clock(), 0)])

    def add(self, n: int = 1) -> None:
        """Count ``n`` more items done (any thread)."""
        with self._lock:
            self._done += int(n)
            self._sample()

    def set(self, done: int, total: int | None = None) -> None:
        """Set the count (e.g. from a block event); ``total`` replaces the total when given."""
        with self._lock:
            self._done = int(done)
            if total is not None:
                self._total = int(total)
            self._sample()

    def _sample(self) -> None:
        now = self._clock()
        self._samples.append((now, self._done))
        while len(self._samples) > 2 and now - self._samples[1][0] > self._window:
            self._samples.popleft()

    def reading(self) -> MeterReading:
        """The phase, counts, rate and ETA now."""
        with self._lock:
            now = self._clock()
            rate = None
            if self._samples:
                t0, d0 = self._samples[0]
                if now - t0 > 0 and self._done > d0:
                    rate = (self._done - d0) / (now - t0)
            eta = (self._total - self._done) / rate if rate and self._total else None
            total = max(self._total, self._done) if self._total else 0
            return MeterReading(self._phase, self._done, total, self._unit, rate, eta)
