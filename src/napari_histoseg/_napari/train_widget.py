"""Train / fine-tune widget: folders and options in, :func:`~napari_histoseg.training.train.train` in a worker.

Per-epoch loss and validation score are plotted while it runs; Cancel ends the run after the current step and
keeps the best checkpoint, which is then selectable in the Segment widget (shared model registry). A second
section saves an image layer + a painted/corrected Labels layer as a training pair.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_histoseg.export_pairs import save_pair, unique_name

from . import layers as L
from .model_registry import registry_for
from .readout import readout_label
from .settings import load_settings, restore, save_settings, snapshot
from .workers import JobRunner, TrainingProgress, device_choices

SECTION = "train"
STARTS = ("default model", "checkpoint", "scratch")
VALIDATION = ("fraction", "folder")
PAIR_EXTENTS = ("painted area", "current view")


class LossPlot(QWidget):
    """A small live plot: training loss (orange, own scale) and validation score (cyan, 0-1) per epoch."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.losses: list[float] = []
        self.scores: list[float] = []

    def clear(self) -> None:
        self.losses, self.scores = [], []
        self.update()

    def add(self, loss: float, score: float) -> None:
        self.losses.append(loss)
        self.scores.append(score)
        self.update()

    def _points(self, values: list[float], lo: float, hi: float, w: float, h: float, m: float) -> list[QPointF]:
        n = max(len(values) - 1, 1)
        span = (hi - lo) or 1.0
        return [
            QPointF(m + (w - 2 * m) * i / n, h - m - (h - 2 * m) * (v - lo) / span)
            for i, v in enumerate(values)
            if math.isfinite(v)
        ]

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        w, h, m = float(self.width()), float(self.height()), 8.0
        painter.setPen(QPen(QColor(120, 120, 120)))
        painter.drawRect(int(m), int(m), int(w - 2 * m), int(h - 2 * m))
        finite = [v for v in self.losses if math.isfinite(v)]
        for values, lo, hi, colour in (
            (self.losses, min(finite, default=0.0), max(finite, default=1.0), QColor(255, 150, 40)),
            (self.scores, 0.0, 1.0, QColor(60, 200, 230)),
        ):
            points = self._points(values, lo, hi, w, h, m)
            painter.setPen(QPen(colour, 2))
            for a, b in zip(points, points[1:], strict=False):
                painter.drawLine(a, b)
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
        painter.setPen(QPen(QColor(200, 200, 200)))
        painter.drawText(int(m + 4), int(m + 14), "loss (orange)  val score (cyan)")
        painter.end()


class TrainWidget(Container):
    """Train a model from scratch or fine-tune one on folder pairs; add pairs from layers."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True, scrollable=True)  # the form is taller than a laptop's window
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.runner = JobRunner("Training")
        self.last_result = None

        self.train_dir = FileEdit(label="training folder", mode="d")
        self.validation = RadioButtons(label="validation", choices=VALIDATION, value="fraction")
        self.val_fraction = FloatSpinBox(label="validation fraction", min=0.0, max=0.9, step=0.05, value=0.2)
        self.val_dir = FileEdit(label="validation folder", mode="d")
        self.start_from = ComboBox(label="start from", choices=STARTS, value="checkpoint")
        self.init = ComboBox(label="checkpoint", choices=lambda _w=None: [(e.label, e) for e in self.registry.entries])
        self.width_ = FloatSpinBox(label="width (scratch)", min=0.25, max=2.0, step=0.25, value=1.0)
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=20)
        self.lr = LineEdit(label="learning rate", value="1e-4")
        self.batch_size = SpinBox(label="batch size", min=1, max=512, value=8)
        self.patch = SpinBox(label="patch (px)", min=64, max=1024, step=32, value=256)
        self.mpp = FloatSpinBox(label="image um/px (0: unknown)", min=0.0, max=10.0, step=0.05, value=0.5)
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.out_dir = FileEdit(label="output folder", mode="d")
        self.run_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel (keep best)", enabled=False)
        self.status = readout_label()
        self.plot = LossPlot()
        self.pair_image = ComboBox(label="image", choices=self._layers(Image))
        self.pair_labels = ComboBox(label="labels (1-3)", choices=self._layers(Labels))
        self.pair_extent = RadioButtons(label="pair from", choices=PAIR_EXTENTS, value=PAIR_EXTENTS[0])
        self.pairs_dir = FileEdit(label="pairs folder", mode="d")
        self.add_pair = PushButton(text="Add training pair")
        self.extend([
            self.train_dir, self.validation, self.val_fraction, self.val_dir, self.start_from, self.init,
            self.width_, self.epochs, self.lr, self.batch_size, self.patch, self.mpp, self.device, self.out_dir,
            self.run_button, self.cancel_button, self.status,
        ])  # fmt: skip
        self.root_native_widget.widget().layout().addWidget(self.plot)
        self.extend([Label(value="<b>Training pair from layers</b>"), self.pair_image, self.pair_labels,
                     self.pair_extent, self.pairs_dir, self.add_pair])  # fmt: skip
        self._persisted = {
            "train_dir": self.train_dir, "validation": self.validation, "val_fraction": self.val_fraction,
            "val_dir": self.val_dir, "start_from": self.start_from, "width": self.width_, "epochs": self.epochs,
            "lr": self.lr, "batch_size": self.batch_size, "patch": self.patch, "mpp": self.mpp,
            "device": self.device, "out_dir": self.out_dir, "pairs_dir": self.pairs_dir,
        }  # fmt: skip
        restore(self._persisted, load_settings(SECTION))

        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.add_pair.changed.connect(self.save_pair)
        self.registry.changed.connect(lambda _entry: self.init.reset_choices())
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)

    @property
    def native(self):
        """The scroll area around the form: napari docks ``.native``, which for a scrollable container would be the
        form alone, leaving the scroll area behind."""
        return self.root_native_widget

    def _layers(self, kind):
        return lambda _widget=None: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _layers_changed(self, _event=None) -> None:
        self.pair_image.reset_choices()
        self.pair_labels.reset_choices()

    # --- training ---------------------------------------------------------------------------------------
    def config(self):
        """The :class:`TrainConfig` the form describes (raises ``ValueError`` naming the problem)."""
        from napari_histoseg.engine.jobs import default_model_path
        from napari_histoseg.training.config import TrainConfig

        train_dir = str(self.train_dir.value)
        if not str(self.train_dir.value).strip() or not Path(train_dir).is_dir() or train_dir == ".":
            raise ValueError(f"choose a training folder with input/ and gt/ (got {train_dir!r})")
        try:
            lr = float(self.lr.value)
        except ValueError:
            raise ValueError(f"learning rate {self.lr.value!r} is not a number") from None
        init, width = None, None
        if self.start_from.value == "default model":
            init = default_model_path()
            if init is None:
                raise ValueError("no bundled default model is installed; start from a checkpoint or from scratch")
        elif self.start_from.value == "checkpoint":
            if self.init.value is None:
                raise ValueError("choose a checkpoint to fine-tune (add one in the Segment widget)")
            init = self.init.value.path
        else:
            width = self.width_.value
        out_root = Path(self.out_dir.value) if str(self.out_dir.value) not in ("", ".") else Path(train_dir).parent
        use_folder = self.validation.value == "folder"
        return TrainConfig(
            train_dir=train_dir,
            out=str(out_root / f"run-{time.strftime('%Y%m%d-%H%M%S')}"),
            val_dir=str(self.val_dir.value) if use_folder else None,
            val_fraction=0.0 if use_folder else self.val_fraction.value,
            epochs=self.epochs.value,
            batch_size=self.batch_size.value,
            lr=lr,
            patch=self.patch.value,
            init=None if init is None else str(init),
            width=width,
            device=self.device.value,
            model_mpp=self.mpp.value or None,
            num_workers=0,  # no loader processes forked from inside napari
        ).validated()

    def start(self) -> None:
        """Start training with the form's settings (errors become notifications)."""
        from napari_histoseg.training.train import train

        if self.runner.running:
            return
        try:
            config = self.config()
        except ValueError as exc:
            show_error(f"Cannot train: {exc}")
            return
        save_settings(SECTION, snapshot(self._persisted))
        self.plot.clear()
        self.status.value = f"starting: {config.out}"
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.runner.start(
            lambda cancel: train(config, should_stop=cancel.is_set),
            on_event=self._event,
            on_done=self._done,
            on_error=lambda exc: show_error(f"Training failed: {exc}"),
            on_finished=self._finished,
            label=Path(config.out).name,
            stop_on_cancel=False,
            describe=TrainingProgress(),
        )

    def cancel(self) -> None:
        """Stop after the current step; the best checkpoint so far is kept and listed."""
        self.runner.cancel()
        self.cancel_button.enabled = False

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _event(self, event) -> None:
        if hasattr(event, "best_epoch") and hasattr(event, "train_loss"):  # an epoch event
            self.plot.add(event.train_loss, event.score)
            from napari_histoseg.training.evaluate import format_metrics

            self.status.value = (
                f"epoch {event.epoch}/{event.epochs}: loss {event.train_loss:.4f}, score {event.score:.3f} "
                f"(best {event.best_score:.3f} at epoch {event.best_epoch})\n{format_metrics(event.val)}"
            )

    def _done(self, result) -> None:
        self.last_result = result
        if not result.best_checkpoint:
            self.status.value = "stopped before the first epoch ended: no checkpoint"
            show_info("Training stopped before any epoch finished; no checkpoint was saved")
            return
        run = Path(result.run_dir).name
        self.registry.add(result.best_checkpoint, source="trained", label=f"trained: {run} (epoch {result.best_epoch})")
        ended = "cancelled" if result.cancelled else "finished"
        self.status.value += f"\n{ended}; best: {result.best_checkpoint}"
        show_info(f"Training {ended}: {run} best epoch {result.best_epoch} is selectable in Segment tumor cells")

    # --- pairs from layers ------------------------------------------------------------------------------
    def save_pair(self) -> None:
        """Save the chosen image + labels (painted area or current view) into the pairs folder."""
        image, labels = self.pair_image.value, self.pair_labels.value
        folder = Path(self.pairs_dir.value) if str(self.pairs_dir.value) not in ("", ".") else None
        try:
            if image is None or labels is None:
                raise ValueError("choose an image layer and a Labels layer painted with classes 1-3")
            if folder is None:
                raise ValueError("choose a pairs folder (it gets input/ and gt/)")
            box = L.visible_box(self.viewer, labels) if self.pair_extent.value == "current view" else None
            pixels, classes = L.pair_arrays(image, labels, box)
            name = unique_name(folder, image.name)
            input_path, _ = save_pair(pixels, classes, folder, name)
        except ValueError as exc:
            show_error(f"Cannot add a training pair: {exc}")
            return
        if str(self.train_dir.value) in ("", "."):
            self.train_dir.value = folder
        save_settings(SECTION, snapshot(self._persisted))
        show_info(f"Added training pair {input_path.stem} ({classes.shape[0]} x {classes.shape[1]} px) to {folder}")
