"""Train widget in a real viewer (Xvfb): a short run whose model appears in the Segment widget, Cancel keeping the
best checkpoint, errors as notifications, and training pairs saved from layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _pyramids import real_tissue
from napari_histoseg._napari.segment_widget import SegmentWidget
from napari_histoseg._napari.settings import CONFIG_ENV, load_settings
from napari_histoseg._napari.train_widget import TrainWidget
from napari_histoseg.export_pairs import save_pair
from napari_histoseg.training.image_files import read_image, read_mask
from napari_histoseg.training.pair_folders import find_pairs

WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


def _labels(h: int, w: int, seed: int) -> np.ndarray:
    """Blobby classes 1-3 on background, like cells."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    for _ in range(6):
        y, x, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(3, 7)
        yy, xx = np.ogrid[:h, :w]
        disk = (yy - y) ** 2 + (xx - x) ** 2
        labels[disk <= (r + 1) ** 2] = 3
        labels[disk <= r**2] = rng.integers(1, 3)
    return labels


@pytest.fixture
def pairs(tmp_path) -> Path:
    folder = tmp_path / "pairs"
    for i in range(3):
        save_pair(real_tissue(64, 64, y=1000 + 64 * i), _labels(64, 64, i), folder, f"tile_{i}")
    return folder


def _train_widget(viewer, pairs: Path, tmp_path: Path, epochs: int = 1) -> TrainWidget:
    widget = TrainWidget(viewer)
    widget.train_dir.value = pairs
    widget.validation.value = "fraction"
    widget.val_fraction.value = 0.3
    widget.start_from.value = "scratch"
    widget.width_.value = 0.25
    widget.epochs.value = epochs
    widget.batch_size.value = 2
    widget.patch.value = 64
    widget.device.value = "cpu"
    widget.lr.value = "1e-3"
    widget.out_dir.value = tmp_path / "runs"
    return widget


def _notifications() -> list[str]:
    from napari.utils.notifications import notification_manager

    messages: list[str] = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    return messages


@pytest.mark.slow
def test_short_training_makes_a_model_the_segment_widget_offers(make_napari_viewer, qtbot, pairs, tmp_path) -> None:
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-histoseg", "Segment tumor cells")
    _, train = viewer.window.add_plugin_dock_widget("napari-histoseg", "Train / fine-tune")
    widget = _train_widget(viewer, pairs, tmp_path)
    assert widget.registry is segment.registry
    widget.run_button.clicked.emit()
    assert widget.runner.running and not widget.run_button.enabled
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)

    result = widget.last_result
    assert result is not None and not result.cancelled and result.epochs_done == 1
    best = Path(result.best_checkpoint)
    assert best.is_file() and best.with_suffix(".json").is_file()
    assert widget.plot.losses and np.isfinite(widget.plot.losses[0])
    assert "epoch 1/1" in widget.status.value
    entry = segment.model.value
    assert isinstance(segment, SegmentWidget)
    assert entry.source == "trained" and entry.path == best  # listed and selected in the Segment widget
    assert best in [e.path for e in train.registry.entries]
    assert load_settings("train")["epochs"] == 1 and load_settings("train")["lr"] == "1e-3"


def test_cancel_keeps_the_best_checkpoint(make_napari_viewer, qtbot, pairs, tmp_path) -> None:
    viewer = make_napari_viewer()
    widget = _train_widget(viewer, pairs, tmp_path, epochs=200)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 1, timeout=WAIT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    result = widget.last_result
    assert result.cancelled and 1 <= result.epochs_done < 200
    assert Path(result.best_checkpoint).is_file()
    assert widget.registry.find(result.best_checkpoint).source == "trained"
    assert "cancelled" in widget.status.value and widget.run_button.enabled


def test_training_errors_are_notifications(make_napari_viewer, qtbot, tmp_path) -> None:
    messages = _notifications()
    viewer = make_napari_viewer()
    empty = tmp_path / "not_pairs"
    (empty / "input").mkdir(parents=True)
    widget = _train_widget(viewer, empty, tmp_path)
    widget.run_button.clicked.emit()  # the form is valid; the core finds the folder unusable in the worker
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: any("Training failed" in m for m in messages), timeout=WAIT_MS)
    assert any(str(empty / "gt") in m for m in messages)
    widget.lr.value = "fast"
    widget.run_button.clicked.emit()
    assert not widget.runner.running
    assert any("learning rate 'fast'" in m for m in messages)


def test_pair_from_painted_layers(make_napari_viewer, qtbot, tmp_path) -> None:
    messages = _notifications()
    viewer = make_napari_viewer()
    tissue = real_tissue(120, 150)
    image = viewer.add_image(tissue, rgb=True, name="crop")
    painted = np.zeros((120, 150), np.uint8)
    painted[20:40, 30:60] = 1
    painted[50:70, 80:100] = 2
    painted[39, 30:60] = 3
    labels = viewer.add_labels(painted, name="corrected")
    widget = TrainWidget(viewer)
    widget.pair_image.value, widget.pair_labels.value = image, labels
    widget.pairs_dir.value = tmp_path / "mine"
    widget.add_pair.clicked.emit()
    [pair] = find_pairs(tmp_path / "mine")
    np.testing.assert_array_equal(read_image(pair.image), tissue[20:70, 30:100])
    np.testing.assert_array_equal(read_mask(pair.gt)[0], painted[20:70, 30:100])
    assert Path(widget.train_dir.value) == tmp_path / "mine"
    # Again: a second pair with a new name; then an unpainted layer is refused with a notification.
    widget.add_pair.clicked.emit()
    assert len(find_pairs(tmp_path / "mine")) == 2
    widget.pair_labels.value = viewer.add_labels(np.zeros((120, 150), np.uint8), name="empty")
    widget.add_pair.clicked.emit()
    assert any("no painted pixels" in m for m in messages)
    assert len(find_pairs(tmp_path / "mine")) == 2


def test_fine_tuning_trains_the_decoder_side_unless_told_otherwise(make_napari_viewer, pairs, tmp_path) -> None:
    from napari_histoseg.training.corrections import FINETUNE_DEFAULTS

    widget = _train_widget(make_napari_viewer(), pairs, tmp_path)
    widget.lr.value = "auto"
    assert widget.trainable.value == "auto" and widget.config().trainable == "all"  # from scratch: every layer
    widget.start_from.value = "default model"
    config = widget.config()
    assert config.trainable == FINETUNE_DEFAULTS["trainable"] == "decoder"
    assert (config.optimizer, config.lr) == (FINETUNE_DEFAULTS["optimizer"], FINETUNE_DEFAULTS["lr"])
    widget.trainable.value = "all"
    assert widget.config().trainable == "all"
