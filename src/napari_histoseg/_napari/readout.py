"""The widgets' multi-line result readouts."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy


def readout_label() -> Label:
    """An empty label for a multi-line readout that wraps to the dock's width.

    With its text's width as its minimum (Qt's default for a wrapped label in this layout) a long line made the
    form wider than the dock, its right edge cut off; ignoring it horizontally lets the label take the dock's
    width and grow in height instead.
    """
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label
