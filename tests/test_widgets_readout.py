"""The widgets' result readouts in a real viewer (Xvfb): long text wraps inside the dock, nothing is cut off."""

from __future__ import annotations

from operator import attrgetter

import pytest

from napari_histoseg._napari.segment_widget import SegmentWidget
from napari_histoseg._napari.settings import CONFIG_ENV
from napari_histoseg._napari.train_widget import TrainWidget

SEGMENT_READOUT = "\n".join([
    "background: 6,481,411, tumor cell: 16,029, non-tumor cell: 69,329, cell boundary: 19,971",
    "18.8% of cell pixels are tumor",
    "Whole result: tumor cellularity 13.7% of 1,867 cells (256 tumor, 1,611 non-tumor; 18.2% by area)",
])  # fmt: skip
TRAIN_READOUT = (
    "epoch 12/40: loss 0.4321, score 0.612 (best 0.631 at epoch 9)\n"
    "  Dice background 0.9590\n"
    "finished; best: /home/pathologist/projects/her2-breast-cohort/runs/fine-tune-2026-11-30/best.safetensors"
)


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


@pytest.mark.parametrize(
    ("widget_class", "attribute", "text"),
    [(SegmentWidget, "result.details", SEGMENT_READOUT), (TrainWidget, "status", TRAIN_READOUT)],
    ids=["segment", "train"],
)
def test_long_readout_wraps_inside_the_dock(make_napari_viewer, qtbot, widget_class, attribute, text) -> None:
    """Every wrapped line shows, also in the Train widget's form, which is taller than a 900 px window and
    scrolls (see below)."""
    viewer = make_napari_viewer()
    widget = widget_class(viewer)
    dock = viewer.window.add_dock_widget(widget, name="widget", area="right")
    viewer.window._qt_window.resize(1400, 900)
    viewer.window.screenshot(flash=False)  # lays the window out, readout empty, as a user first sees it
    width = widget.native.width()
    readout = attrgetter(attribute)(widget)
    if widget_class is SegmentWidget:
        widget.result.set_text("Tumor cellularity 13.7% (256 of 1,867 cells)", text)
        widget.result.section.expanded = True
    else:
        readout.value = text
    viewer.window.screenshot(flash=False)
    label = readout.native
    assert widget.native.width() == width <= dock.width()  # the form did not outgrow the dock
    assert label.mapTo(widget.native, label.rect().topRight()).x() <= widget.native.width()
    lines = text.splitlines()
    assert max(label.fontMetrics().horizontalAdvance(line) for line in lines) > label.width()  # too wide: ...
    assert label.heightForWidth(label.width()) >= (len(lines) + 1) * label.fontMetrics().lineSpacing()  # ... wraps
    qtbot.waitUntil(lambda: label.height() >= label.heightForWidth(label.width()), timeout=5_000)  # all shown


def test_train_form_scrolls_in_a_short_window(make_napari_viewer) -> None:
    """With its sections open the Train widget's form is taller than a 700 px window: the dock holds it in a scroll
    area, so its rows keep their height and the last ones (the pair section) are scrolled to, not cut off."""
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    widget.advanced.expanded = widget.pairs.expanded = True  # every section open: taller than the window
    dock = viewer.window.add_dock_widget(widget, name="widget", area="right")
    viewer.window._qt_window.resize(1400, 700)
    viewer.window.screenshot(flash=False)
    scroll = dock.widget()
    assert scroll is widget.native and scroll.widget() is widget.plot.parentWidget()
    form = scroll.widget()
    assert form.height() >= form.minimumSizeHint().height() > scroll.viewport().height()
    assert scroll.verticalScrollBar().maximum() > 0
