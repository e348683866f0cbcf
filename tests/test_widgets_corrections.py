"""Corrections in napari (Xvfb): edits are recorded, an edited result is never overwritten, the pair saves the
corrected cells as reviewed with the image's um/px, the activity-dock bar moves, the readout follows edits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from _pyramids import real_tissue
from napari_histoseg._napari import layers as L
from napari_histoseg._napari.edits import on_edits_settled, was_edited
from napari_histoseg._napari.settings import CONFIG_ENV
from napari_histoseg._napari.train_widget import TrainWidget
from napari_histoseg._napari.workers import JobRunner
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import load_pairs


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


def _result(viewer):
    tissue = real_tissue(120, 150)
    image = viewer.add_image(tissue, rgb=True, name="crop", scale=(0.5, 0.5), units=("um", "um"))
    labels = np.zeros((120, 150), np.uint8)
    labels[20:30, 30:40] = 2  # a cell the model called non-tumor
    labels[60:70, 80:90] = 2  # another, left as it is
    layer = L.show_labels(viewer, image, labels, metadata={}, multiscale=False)
    return image, layer


def test_an_edited_result_is_kept_and_its_corrected_cells_are_reviewed(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    image, layer = _result(viewer)
    assert not was_edited(layer)
    layer.fill((25, 35), 1)  # the fill bucket: the first cell becomes tumor
    assert was_edited(layer)
    assert L.find_result_layer(viewer, image) is None  # a new result will not go into the corrected layer
    new = L.show_labels(viewer, image, np.zeros((120, 150), np.uint8), metadata={}, multiscale=False)
    assert new is not layer and (layer.data[20:30, 30:40] == 1).all()

    widget = TrainWidget(viewer)
    widget.pair_image.value, widget.pair_labels.value = image, layer
    widget.pairs_dir.value = tmp_path / "pairs"
    widget.add_pair.clicked.emit()
    [pair] = find_pairs(tmp_path / "pairs")
    assert pair.reviewed is not None and pair.meta is not None
    [sample], _ = load_pairs([pair])
    assert sample.mpp == 0.5
    # The pair is the painted area (20:70, 30:90): the corrected cell is reviewed, the untouched one is not.
    assert sample.reviewed[0:10, 0:10].all() and not sample.reviewed[40:50, 50:60].any()


def test_the_activity_bar_moves(make_napari_viewer, qtbot) -> None:
    make_napari_viewer()
    runner = JobRunner("Test")
    values: list[int] = []

    def job(_cancel):
        for k in range(1, 4):
            time.sleep(0.3)
            yield k
        time.sleep(0.3)
        return "done"

    runner.start(job, describe=lambda k: (k, 3, f"{k}/3"), label="bar")
    runner._bar.events.value.connect(lambda e: values.append(e.value))
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert values == [1, 2, 3]  # napari's bar (the activity dock's) moves on value events


def test_callback_after_edits(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    _, layer = _result(viewer)
    seen = []
    on_edits_settled(layer, lambda lay: seen.append(int((lay.data == 1).sum())), delay_ms=50)
    layer.fill((65, 85), 1)
    qtbot.waitUntil(lambda: bool(seen), timeout=5_000)
    assert seen[-1] == 100
