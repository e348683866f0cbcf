"""The widgets' multi-line result readouts."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QLabel, QSizePolicy


class _HeightForWidth(QObject):
    """Keeps a wrapped label's minimum height at what its text needs at its current width.

    Qt's layouts pass height-for-width to a label only in some layouts: in a scrollable form (the Train widget) the
    label kept its one-line height and the wrapped lines were cut off.
    """

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Resize and isinstance(watched, QLabel):
            fit_height(watched)
        return False


def fit_height(label: QLabel) -> None:
    """Set the label's minimum height to the height of its wrapped text at its width."""
    label.setMinimumHeight(max(0, label.heightForWidth(label.width())))


def readout_label() -> Label:
    """An empty label for a multi-line readout that wraps to the dock's width.

    With its text's width as its minimum (Qt's default for a wrapped label in this layout) a long line made the
    form wider than the dock, its right edge cut off; ignoring it horizontally lets the label take the dock's
    width and grow in height instead.
    """
    label = Label(value="")
    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    native._fit_height = _HeightForWidth(native)  # parented to the label: lives and dies with it
    native.installEventFilter(native._fit_height)
    label.changed.connect(lambda _value: fit_height(native))
    return label
