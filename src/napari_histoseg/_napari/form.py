"""Form pieces shared by the widgets: a path field that fits a narrow dock, a collapsible section, tooltips.

magicgui's FileEdit shows the end of a long path in a line edit and a "Choose directory" button that a 360 px dock
cuts off; :class:`PathField` shows the whole path elided in the middle (full path in its tooltip) and a small
button. :class:`Section` is a titled group whose body a toggle button shows or hides.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, Label, PushButton, Widget
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QSizePolicy
from superqt import QElidingLabel

NARROW_DOCK_PX = 360
MIN_COMBO_CHARS = 12
OPEN, CLOSED = "\u25be", "\u25b8"  # small triangles: down, right


def tip(widget: Widget, text: str) -> Widget:
    """Set a tooltip on a magicgui widget (and on its label, which magicgui builds from it); return the widget.

    A combo box is also kept narrow: a long layer or model name is elided instead of widening the dock.
    """
    widget.tooltip = text
    if isinstance(widget.native, QComboBox):
        widget.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        widget.native.setMinimumContentsLength(MIN_COMBO_CHARS)
    return widget


class PathField(Container):
    """A file or folder path: the path elided in the middle, its full text in the tooltip, and a "..." button.

    ``value`` is a :class:`~pathlib.Path` or ``None`` (nothing chosen: never ``Path('.')``); ``changed`` fires with
    the new value. ``mode``: "d" a folder, "r" an existing file.
    """

    path_changed = Signal(object)

    def __init__(self, *, label: str, mode: str = "d", filter: str = "", value=None, placeholder: str = "not chosen"):
        self._mode, self._filter, self._placeholder = mode, filter, placeholder
        self._path: Path | None = None
        self._text = QElidingLabel()
        self._text.setElideMode(Qt.TextElideMode.ElideMiddle)
        self._text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.button = PushButton(text="...")
        self.button.native.setFixedWidth(32)
        self.button.tooltip = "choose a folder" if mode == "d" else "choose a file"
        super().__init__(layout="horizontal", labels=False, label=label)
        self.margins = (0, 0, 0, 0)
        self.append(self.button)
        self.native.layout().insertWidget(0, self._text, 1)
        self.button.changed.connect(self._choose)
        self.value = value

    @property
    def value(self) -> Path | None:
        return self._path

    @value.setter
    def value(self, value) -> None:
        text = "" if value is None else str(value).strip()
        path = Path(text).expanduser() if text and text != "." else None
        self._path = path
        self._text.setText(str(path) if path else self._placeholder)
        self._text.setToolTip(str(path) if path else self._placeholder)
        self._text.setEnabled(path is not None)
        self.path_changed.emit(path)

    @property
    def full_text(self) -> str:
        """The whole path as shown in the tooltip."""
        return self._text.toolTip()

    def _choose(self, _=None) -> None:
        start = str(self._path or Path.home())
        if self._mode == "d":
            chosen = QFileDialog.getExistingDirectory(self.native, self.label, start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self.native, self.label, start, self._filter)
        if chosen:
            self.value = chosen


class Section(Container):
    """A titled, collapsible group of form rows: a toggle button, then the rows (hidden while collapsed)."""

    def __init__(self, title: str, widgets: list[Widget], *, expanded: bool = False, tooltip: str = ""):
        self.title = title
        self.toggle = PushButton(text="")
        self.toggle.native.setCheckable(True)
        self.toggle.native.setStyleSheet("text-align: left; padding-left: 4px;")
        if tooltip:
            self.toggle.tooltip = tooltip
        self.body = Container(widgets=widgets, labels=True)
        self.body.margins = (8, 0, 0, 0)
        super().__init__(widgets=[self.toggle, self.body], labels=False)
        self.margins = (0, 0, 0, 0)
        self.toggle.native.toggled.connect(self._set_expanded)
        self.expanded = expanded

    @property
    def expanded(self) -> bool:
        return self.toggle.native.isChecked()

    @expanded.setter
    def expanded(self, value: bool) -> None:
        self.toggle.native.setChecked(bool(value))
        self._set_expanded(bool(value))

    def _set_expanded(self, value: bool) -> None:
        self.toggle.text = f"{OPEN if value else CLOSED} {self.title}"
        self.body.visible = value


def heading(text: str) -> Label:
    """A bold section heading."""
    return Label(value=f"<b>{text}</b>")
