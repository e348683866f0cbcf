"""The widgets' multi-line result readouts."""

from __future__ import annotations

from magicgui.widgets import Container, Label
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
    """Set the label's minimum height to the height of its wrapped text at its width.

    The containers above it are told that their size hints changed too: otherwise a label nested in a row of a
    form (the resolution field's note) grew inside a row that kept its old height, its last lines under the next
    row. It shrinks again for a shorter text.
    """
    had = label.minimumHeight()
    label.setMinimumHeight(0)  # heightForWidth is never below the minimum height (a longer text's, set before)
    need = max(0, label.heightForWidth(label.width()))
    label.setMinimumHeight(need)
    if need == had:
        return
    parent = label.parentWidget()
    while parent is not None and not parent.isWindow():
        parent.updateGeometry()
        parent = parent.parentWidget()


class ReadoutLabel(Label):
    """A label whose wrapped text keeps the height it needs when its text changes (a magicgui Label emits no
    ``changed`` when its value is set)."""

    def set_value(self, value) -> None:
        super().set_value(value)
        fit_height(self.native)


def readout_label(style: str = "") -> ReadoutLabel:
    """An empty label for a multi-line readout that wraps to the dock's width.

    With its text's width as its minimum (Qt's default for a wrapped label in this layout) a long line made the
    form wider than the dock, its right edge cut off; ignoring it horizontally lets the label take the dock's
    width and grow in height instead.
    """
    label = ReadoutLabel(value="")
    native = label.native
    native.setStyleSheet(style)
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    native._fit_height = _HeightForWidth(native)  # parented to the label: lives and dies with it
    native.installEventFilter(native._fit_height)
    return label


HEADLINE_STYLE = "font-size: 15pt; font-weight: bold;"


def cellularity_headline(whole: dict) -> str:
    """The answer first: "Tumor cellularity 12.8% (373 of 2,921 cells)" from a readout's ``whole`` dict."""
    cells = int(whole.get("cells") or 0)
    if not cells:
        return "No cells found"
    share = whole.get("cellularity_by_count")
    return f"Tumor cellularity {100 * share:.1f}% ({int(whole['tumor_cells']):,} of {cells:,} cells)"


class ResultReadout(Container):
    """A Segment result: one line in large type (the cellularity, or what is happening), details under a toggle."""

    def __init__(self):
        from .form import Section

        self.headline = readout_label(HEADLINE_STYLE)
        self.details = readout_label()
        self.section = Section("Details", [self.details], tooltip="cell counts, areas, regions and class pixels")
        self.section.body.labels = False
        super().__init__(widgets=[self.headline, self.section], labels=False)
        self.margins = (0, 0, 0, 0)
        self.section.visible = False
        self.headline.visible = False

    def set_text(self, headline: str, details: str = "") -> None:
        """Set the large line and the details (the toggle shows only when there are details)."""
        self.headline.value = headline
        self.headline.visible = bool(headline)
        self.details.value = details
        self.section.visible = bool(details)

    @property
    def text(self) -> str:
        """Headline and details as plain text (first line: the headline)."""
        return "\n".join(part for part in (self.headline.value, self.details.value) if part)
