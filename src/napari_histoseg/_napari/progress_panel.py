"""A progress bar with a line of text, inside a widget (the activity dock is closed by default)."""

from __future__ import annotations

from magicgui.widgets import Container, ProgressBar

from .job_meter import MeterReading
from .readout import readout_label


class ProgressPanel(Container):
    """The phase and count ("segmenting: tile 12 of 340 · 2.9 tiles/s · about 2 min left") over a bar."""

    def __init__(self):
        self.bar = ProgressBar(min=0, max=1, value=0)
        self.bar.native.setTextVisible(False)
        self.text = readout_label()  # wraps, and keeps the height its lines need
        super().__init__(widgets=[self.text, self.bar], labels=False)
        self.margins = (0, 0, 0, 0)
        self.visible = False

    def show_reading(self, reading: MeterReading) -> None:
        """Show a reading; with an unknown total the bar shows activity only."""
        self.visible = True
        self.text.value = reading.text
        if reading.total:
            self.bar.max = reading.total
            self.bar.value = min(reading.done, reading.total)
        else:
            self.bar.max = 0  # Qt's busy indicator
            self.bar.value = 0

    def finish(self) -> None:
        """Hide the panel when the job has ended."""
        self.visible = False
