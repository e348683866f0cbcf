"""The widgets as a pathologist meets them (Xvfb): nothing clipped in a 360 px dock, the image resolution shown and
asked for, progress that moves, warnings from workers shown, the readout's answer first, class names on hover."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit
from superqt import QElidingLabel

from _pyramids import real_tissue
from napari_histoseg._napari import segment_job
from napari_histoseg._napari.resolution_field import MPP_KEY
from napari_histoseg._napari.segment_widget import SegmentWidget
from napari_histoseg._napari.settings import CONFIG_ENV
from napari_histoseg._napari.train_widget import TrainWidget
from napari_histoseg._napari.workers import JobRunner
from napari_histoseg.classes import CLASS_NAMES
from napari_histoseg.engine.mpp_estimate import SIZE_MODEL, MppEstimate
from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from test_widgets_segment import _widget, calibrated_tiny_model

PLUGIN = "napari-histoseg"
DOCK_PX = 360
WAIT_MS = 90_000  # generous: CI machines may be busy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny calibrated random model of the Segment widget tests (model card at 0.5 um/px)."""
    model = calibrated_tiny_model()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, card_for(model, mpp=0.5))


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


def _notifications() -> list[str]:
    from napari.utils.notifications import notification_manager

    messages: list[str] = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    return messages


def _shown_rect(child, root) -> QRect:
    """The part of ``child`` its ancestors up to ``root`` leave visible (each ancestor clips its children)."""
    rect = QRect(child.mapTo(root, QPoint(0, 0)), child.size())
    parent = child.parentWidget()
    while parent is not None and parent is not root:
        rect = rect.intersected(QRect(parent.mapTo(root, QPoint(0, 0)), parent.size()))
        parent = parent.parentWidget()
    return rect.intersected(root.rect())


def _clipped(root) -> list[str]:
    """Visible controls of ``root`` cut off on the right or squeezed below the size their content needs."""
    problems = []
    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit, QLabel)
    for child in root.findChildren(kinds):
        if not child.isVisibleTo(root) or isinstance(child, QElidingLabel):
            continue
        if isinstance(child, QLabel) and not child.text():
            continue
        name = f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r}"
        shown = _shown_rect(child, root)
        if shown.size() != child.size():
            problems.append(f"{name}: {shown.width()} x {shown.height()} of {child.width()} x {child.height()} shown")
        if isinstance(child, QLabel) and child.wordWrap():  # wraps to any width: all its lines must show
            need = child.heightForWidth(child.width())
            if child.height() < need:
                problems.append(f"{name} is {child.height()} px tall, its lines need {need}")
            continue
        hint = child.minimumSizeHint()
        if child.width() < hint.width() or child.height() < hint.height():
            problems.append(f"{name} is {child.width()} x {child.height()} px, needs {hint.width()} x {hint.height()}")
    return problems


def test_no_control_is_clipped_in_a_360px_dock(make_napari_viewer, qtbot) -> None:
    """Both widgets tabbed in one 360 px dock, every section open and every optional field shown."""
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(64, 64), rgb=True, name="a tissue image with a rather long layer name.tif")
    viewer.add_shapes([[[2, 2], [2, 20], [20, 20]]], shape_type="polygon", name="regions")
    segment, train = SegmentWidget(viewer), TrainWidget(viewer)
    segment.advanced.expanded = True
    segment.extent.value = "current view"
    segment.result.set_text("Tumor cellularity 12.8% (373 of 2,921 cells)", "details")
    segment.result.section.expanded = True
    segment.output_dir.value = "/home/pathologist/projects/her2-breast-cohort/slides/results/predictions"
    train.advanced.expanded = train.pairs.expanded = True
    train.validation.value = "folder"
    train.start_from.value = "scratch"
    train.train_dir.value = "/home/pathologist/projects/her2-breast-cohort/training-pairs/train"
    docks = [
        viewer.window.add_dock_widget(segment, name="Segment", area="right"),
        viewer.window.add_dock_widget(train, name="Train", area="right", tabify=True),
    ]
    viewer.window._qt_window.resize(1400, 1000)
    for dock in docks:
        dock.setFixedWidth(DOCK_PX)
    viewer.window.screenshot(flash=False)
    # Laid out for an image whose resolution is known, then switched to one that states none (a longer note).
    silent = segment.image.value
    segment.image.value = viewer.add_image(real_tissue(64, 64), rgb=True, name="known", metadata={"mpp": 0.5})
    viewer.window.screenshot(flash=False)
    segment.image.value = silent
    viewer.window.screenshot(flash=False)

    for dock, widget in zip(docks, (segment, train), strict=True):
        dock.raise_()
        viewer.window.screenshot(flash=False)
        root = widget.native.widget() if hasattr(widget.native, "widget") else widget.native
        assert root.width() <= DOCK_PX
        assert _clipped(root) == []
    # The resolution estimated: a note of three lines inside the form's resolution row.
    estimate = MppEstimate(0.884, "high", 0, 8, 0.08, [0.88] * 8, SIZE_MODEL)
    segment._estimated(silent, estimate)
    docks[0].raise_()
    viewer.window.screenshot(flash=False)
    assert estimate.text in segment.resolution.note.value
    assert _clipped(segment.native) == []
    tall = segment.resolution.native.height()
    segment.image.value = viewer.layers["known"]  # a one-line note: the row gives the room back
    viewer.window.screenshot(flash=False)
    assert segment.resolution.native.height() < tall and _clipped(segment.native) == []
    scroll = train.native
    assert scroll.horizontalScrollBar().maximum() == 0  # no sideways scrolling either
    assert segment.output_dir.full_text.endswith("results/predictions")  # the full path, in the tooltip
    # Fields that do not apply are hidden: the fraction with a validation folder, the checkpoint from scratch.
    assert train.val_fraction.native.isHidden() and not train.val_dir.native.isHidden()
    assert train.init.native.isHidden() and not train.width_.native.isHidden()


def test_every_field_has_a_tooltip(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    segment, train = SegmentWidget(viewer), TrainWidget(viewer)
    fields = [
        segment.image, segment.resolution, segment.model, segment.extent, segment.shapes, segment.outline,
        *segment.advanced.body,
        *train.form, *train.advanced.body, *train.pairs.body,
    ]  # fmt: skip
    missing = [w.label or w.name or repr(w) for w in fields if not w.tooltip and w is not train.mpp_note]
    assert missing == []


def test_unknown_resolution_is_marked_notified_and_asked_for(make_napari_viewer, qtbot, tcga_svs, cmu_svs) -> None:
    messages = _notifications()
    viewer = make_napari_viewer()
    [tcga] = viewer.open(str(tcga_svs), plugin=PLUGIN)
    widget = SegmentWidget(viewer)
    assert widget.image.value is tcga
    assert widget.resolution.value is None and widget.resolution.unknown
    assert "unknown: enter it or Estimate" in widget.resolution.note.value
    assert widget.resolution.note.native.styleSheet()  # marked
    qtbot.waitUntil(lambda: any("tcga-cr-7395" in m and "no resolution" in m for m in messages), timeout=5_000)

    messages.clear()
    widget.run_button.clicked.emit()  # no value: the run asks for one instead of guessing
    assert not widget.runner.running
    assert any("Cannot segment" in m and "Estimate" in m for m in messages)

    widget.resolution.value = 0.25
    assert widget.request().mpp == 0.25
    assert tcga.metadata[MPP_KEY] == {"mpp": 0.25, "source": "entered"}
    assert not widget.resolution.unknown and widget.resolution.note.value == "entered by you"

    [cmu] = viewer.open(str(cmu_svs), plugin=PLUGIN)
    widget.image.value = cmu
    assert widget.resolution.value == pytest.approx(0.499, abs=1e-3)
    assert widget.resolution.note.value == "from the file" and not widget.resolution.note.native.styleSheet()
    widget.image.value = tcga  # the value entered for it is kept
    assert widget.resolution.value == 0.25


def test_worker_warnings_become_notifications(make_napari_viewer, qtbot) -> None:
    make_napari_viewer()
    messages = _notifications()

    def job(_cancel):
        warnings.warn("the slide states no microns per pixel", UserWarning, stacklevel=1)
        yield 1
        logging.getLogger("napari_histoseg.engine.jobs").warning("too little tissue to measure its stain colours")
        return 2

    runner = JobRunner("Segmenting")
    runner.start(job, label="slide")
    qtbot.waitUntil(lambda: not runner.running, timeout=5_000)
    qtbot.waitUntil(lambda: len([m for m in messages if "Segmenting slide" in m]) == 2, timeout=5_000)
    assert any("no microns per pixel" in m for m in messages)
    assert any("too little tissue" in m for m in messages)


def test_progress_moves_tile_by_tile_with_a_short_activity_title(
    make_napari_viewer, qtbot, checkpoint, monkeypatch
) -> None:
    from napari_histoseg.engine import jobs

    def slow_model(path):  # 0.25 s per network batch of one tile
        model, card = jobs.load_model(path)
        model.register_forward_pre_hook(lambda *_: time.sleep(0.25))
        return model, card

    monkeypatch.setattr(segment_job, "load_model", slow_model)
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(384, 384), rgb=True, name="tissue")
    widget = _widget(viewer, checkpoint, tile=128, batch_size=1, block=1024, measure=False)
    seen: list[tuple[float, int, int, str]] = []

    def record():
        bar = widget.progress.bar
        seen.append((time.monotonic(), bar.value, bar.max, widget.progress.text.value))
        return not widget.runner.running

    widget.run_button.clicked.emit()
    assert widget.runner._bar is not None and len(widget.runner._bar.desc) <= 40  # a short activity-dock title
    qtbot.waitUntil(record, timeout=WAIT_MS)

    running = [s for s in seen if s[2] == 16]  # 4 x 4 tiles of 128 px (stride 96) in one 384 px block
    values = [s[1] for s in running]
    assert len(set(values)) >= 4 and values == sorted(values)  # moved within the one block, never backwards
    changes = [t for (t, v, *_), (_, w, *_) in zip(running, running[1:], strict=False) if w != v]
    assert max(np.diff(changes), default=0) < 2.0  # updated at least every 2 s
    assert any("segmenting: tile" in s[3] and "of 16" in s[3] for s in running)
    assert any("left" in s[3] for s in running)  # an ETA
    assert not widget.progress.native.isVisibleTo(widget.native)  # hidden when done


def test_labels_name_their_classes_and_can_show_outlines(make_napari_viewer, qtbot, checkpoint) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(128, 128), rgb=True, name="tissue")
    widget = _widget(viewer, checkpoint, tile=128, measure=False)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    labels = widget.last_layer
    assert list(labels.features["class"]) == list(CLASS_NAMES)
    y, x = np.argwhere(labels.data == 1)[0]
    assert "tumor cell" in str(labels.get_status((y, x), world=True))  # what hovering shows
    assert labels.contour == 0
    widget.outline.value = True
    assert labels.contour > 0


def test_current_view_says_its_size_and_is_not_remembered(make_napari_viewer, qtbot, checkpoint) -> None:
    from napari_histoseg._napari import layers as L

    viewer = make_napari_viewer()
    image = viewer.add_image(real_tissue(256, 256), rgb=True, name="tissue")
    viewer.window._qt_window.resize(900, 700)
    qtbot.wait(50)
    viewer.scene.camera.center = (64, 64)
    viewer.scene.camera.zoom = min(viewer.canvas.size) / 100
    widget = _widget(viewer, checkpoint, tile=64, extent="current view")
    y0, x0, y1, x1 = L.visible_box(viewer, image)
    h, w = y1 - y0, x1 - x0
    assert widget.view_note.value == f"will segment {h * 0.5:.0f} x {w * 0.5:.0f} um ({h:,} x {w:,} px)"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert SegmentWidget(viewer).extent.value == "whole image"  # a new session starts with the whole image


def test_estimate_button_fills_the_resolution_with_its_confidence(make_napari_viewer, qtbot, tcga_svs, monkeypatch):
    """The button runs the estimate in a worker on the slide's pyramid and shows the value and its confidence (the
    estimate itself, with the real model, is tested in test_mpp_estimate.py)."""
    from napari_histoseg.engine import mpp_estimate

    given = []

    def fake_job(image, cancel=None, **_):
        given.append(image)
        yield mpp_estimate.EstimateProgress(1, 2)
        yield mpp_estimate.EstimateProgress(2, 2)
        return mpp_estimate.MppEstimate(0.262, "high", 321, 4, 0.05, [0.5, 0.27, 0.262])

    monkeypatch.setattr(mpp_estimate, "estimate_mpp_job", fake_job)
    messages = _notifications()
    viewer = make_napari_viewer()
    [tcga] = viewer.open(str(tcga_svs), plugin=PLUGIN)
    widget = SegmentWidget(viewer)
    widget.resolution.estimate.clicked.emit()
    qtbot.waitUntil(lambda: not widget.estimator.running, timeout=WAIT_MS)
    [levels] = given
    assert isinstance(levels, list) and len(levels) == len(tcga.data)  # the pyramid, level 0 first
    assert widget.resolution.value == pytest.approx(0.262)
    assert widget.resolution.note.value.startswith("estimated: 0.262 um/px (confidence high")
    assert tcga.metadata[MPP_KEY]["source"] == "estimated"
    assert any("0.262 um/px" in m for m in messages)
    assert widget.request().mpp == pytest.approx(0.262)


def test_train_without_a_folder_says_what_to_choose(make_napari_viewer) -> None:
    messages = _notifications()
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    assert widget.train_dir.value is None and widget.train_dir.full_text == "not chosen"
    widget.run_button.clicked.emit()
    assert not widget.runner.running
    assert any("choose a training folder" in m and "'.'" not in m for m in messages)
    assert widget.mpp.value == pytest.approx(0.25)  # the bundled model's resolution, from its card
    assert "from its card" in widget.mpp_note.value
