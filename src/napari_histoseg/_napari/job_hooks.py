"""Model hooks a widget job hangs on the network: Cancel within a batch, and a count of every tile computed. No Qt."""

from __future__ import annotations

import threading


class JobCancelled(Exception):
    """Raised inside the worker thread to abandon the work in hand after Cancel."""


def cancel_on_forward(model, cancel: threading.Event):
    """Make ``model``'s forward raise :class:`JobCancelled` once ``cancel`` is set; returns the hook handle."""

    def hook(_module, _inputs):
        if cancel.is_set():
            raise JobCancelled

    return model.register_forward_pre_hook(hook)


def count_on_forward(model, meter, tiles_per_batch: int = 1):
    """Count every tile ``model`` has computed on ``meter`` (``tiles_per_batch``: 4 with test-time flips)."""

    def hook(_module, inputs, _output):
        meter.add(int(inputs[0].shape[0]) // tiles_per_batch)

    return model.register_forward_hook(hook)
