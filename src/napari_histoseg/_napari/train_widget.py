"""Train / fine-tune widget: folders and options in, :func:`~napari_histoseg.training.train.train` in a worker.

Per-epoch loss and validation score are plotted while it runs; Cancel ends the run after the current step and
keeps the best checkpoint, which is then selectable in the Segment widget (shared model registry). A second
section saves an image layer + a painted/corrected Labels layer as a training pair.
"""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from napari_histoseg.export_pairs import save_pair, unique_name
from napari_histoseg.training.config import TRAINABLE

from . import layers as L
from .edits import review_of_pair
from .form import PathField, Section, tip
from .loss_plot import LossPlot
from .model_registry import registry_for
from .readout import readout_label
from .settings import load_settings, restore, save_settings, snapshot
from .workers import JobRunner, device_choices

SECTION = "train"
STARTS = ("default model", "checkpoint", "scratch")
VALIDATION = ("fraction", "folder")
PAIR_EXTENTS = ("painted area", "current view")
TIPS = {
    "train_dir": "a folder with input/<name>.png (H&E images) and gt/<name>_gt.png (masks: black background, red "
    "tumor, green non-tumor, blue boundary)",
    "validation": "how to check the model after each epoch: a fraction of the training images held out, or a "
    "separate folder of pairs",
    "val_fraction": "share of the training images held out for validation",
    "val_dir": "a folder of validation pairs (same layout as the training folder)",
    "start_from": "fine-tune the bundled model, fine-tune a checkpoint, or train a new model from scratch",
    "init": "the checkpoint to fine-tune (models added or trained in this session are listed)",
    "width_": "channel width of a new model: 1.0 is the bundled model's size; 0.5 trains about 3x faster",
    "epochs": "passes over the training images; the best epoch (by validation score) is kept",
    "out_dir": "where the run folder (checkpoints, metrics.csv) is written; default: next to the training folder",
    "lr": "learning rate of the optimiser; auto: 2e-5 with Adam and a warm-up when fine-tuning, 1e-4 from scratch",
    "trainable": "which layers learn; auto: the decoder side only when fine-tuning (the encoder keeps what it "
    "learnt, so a few corrections cannot wreck it), every layer from scratch",
    "batch_size": "patches per training step; larger needs more memory",
    "patch": "side of the square patches cut from the training images, in pixels",
    "mpp": "microns per pixel of the training images. Fine-tuning: the model's own resolution unless you know the "
    "images differ. The model card records it, and Segment resamples slides to it",
    "device": "where to train: auto picks a GPU (CUDA or Apple MPS) when there is one, else the CPU",
    "pair_image": "the image layer the training pair's pixels come from",
    "pair_labels": "a Labels layer painted (or corrected) with classes 1 tumor, 2 non-tumor, 3 boundary",
    "pair_extent": "save the painted area (the box around painted pixels) or what the canvas shows",
    "run_button": "train in the background; the loss and validation score of every epoch are plotted below",
    "cancel_button": "stop after the current step; the best checkpoint so far is kept and listed in Segment",
    "add_pair": "save the image pixels and painted labels as input/<name>.png and gt/<name>_gt.png",
    "pairs_dir": "the folder the pair is saved to (it gets input/ and gt/); it becomes the training folder",
}


class TrainWidget(Container):
    """Train a model from scratch or fine-tune one on folder pairs; add pairs from layers."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False, scrollable=True)  # the form is taller than a laptop's window
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.runner = JobRunner("Training")
        self.last_result = None

        self.train_dir = PathField(label="training folder", mode="d")
        self.validation = RadioButtons(label="validation", choices=VALIDATION, value="fraction")
        self.val_fraction = FloatSpinBox(label="validation fraction", min=0.0, max=0.9, step=0.05, value=0.2)
        self.val_dir = PathField(label="validation folder", mode="d")
        self.start_from = ComboBox(label="start from", choices=STARTS, value="checkpoint")
        self.init = ComboBox(label="checkpoint", choices=lambda _w=None: [(e.label, e) for e in self.registry.entries])
        self.width_ = FloatSpinBox(label="width", min=0.25, max=2.0, step=0.25, value=1.0)
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=20)
        self.out_dir = PathField(label="output folder", mode="d", placeholder="next to the training folder")
        self.lr = LineEdit(label="learning rate", value="auto")
        self.trainable = ComboBox(label="layers trained", choices=("auto", *TRAINABLE), value="auto")
        self.batch_size = SpinBox(label="batch size", min=1, max=512, value=8)
        self.patch = SpinBox(label="patch (px)", min=64, max=1024, step=32, value=256)
        self.mpp = FloatSpinBox(label="image um/px", min=0.0, max=10.0, step=0.05, value=0.0)
        self.mpp.native.setDecimals(3)
        self.mpp.native.setSpecialValueText("unknown")
        self.mpp_note = readout_label()
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.run_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel (keep best)", enabled=False)
        self.status = readout_label()
        self.plot = LossPlot()
        self.pair_image = ComboBox(label="image", choices=self._layers(Image))
        self.pair_labels = ComboBox(label="labels (1-3)", choices=self._layers(Labels))
        self.pair_extent = RadioButtons(label="pair from", choices=PAIR_EXTENTS, value=PAIR_EXTENTS[0])
        self.pairs_dir = PathField(label="pairs folder", mode="d")
        self.add_pair = PushButton(text="Add training pair")
        for key, text in TIPS.items():
            tip(getattr(self, key), text)

        self.form = Container(
            widgets=[
                self.train_dir, self.validation, self.val_fraction, self.val_dir, self.start_from, self.init,
                self.width_, self.epochs, self.mpp, self.mpp_note, self.out_dir,
            ],
            labels=True,
        )  # fmt: skip
        self.advanced = Section("Advanced", [self.lr, self.trainable, self.batch_size, self.patch, self.device])
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.pairs = Section(
            "Training pair from layers",
            [self.pair_image, self.pair_labels, self.pair_extent, self.pairs_dir, self.add_pair],
            tooltip="save an image layer and a Labels layer painted with classes 1-3 as a training pair",
        )
        self.form.margins = (0, 0, 0, 0)
        self.extend([self.form, self.advanced, buttons, self.status, self.pairs])
        layout = self.root_native_widget.widget().layout()
        layout.insertWidget(layout.indexOf(self.status.native) + 1, self.plot)  # under the status line
        layout.addStretch(1)  # rows keep their height at the top; spare height goes below them
        self._persisted = {
            "train_dir": self.train_dir, "validation": self.validation, "val_fraction": self.val_fraction,
            "val_dir": self.val_dir, "start_from": self.start_from, "width": self.width_, "epochs": self.epochs,
            "lr": self.lr, "trainable": self.trainable, "batch_size": self.batch_size, "patch": self.patch,
            "device": self.device, "out_dir": self.out_dir, "pairs_dir": self.pairs_dir,
        }  # fmt: skip
        saved = load_settings(SECTION)
        restore(self._persisted, saved)

        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.add_pair.changed.connect(self.save_pair)
        self.registry.changed.connect(lambda _entry: self.init.reset_choices())
        self.validation.changed.connect(self._update_visibility)
        self.start_from.changed.connect(self._start_changed)
        self.init.changed.connect(self._start_changed)
        self.mpp.changed.connect(self._mpp_edited)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self._mpp_source = "entered" if saved.get("mpp") else "card"
        self._start_changed()
        if saved.get("mpp"):
            self._set_mpp(float(saved["mpp"]), "entered")

    def _update_visibility(self, _=None) -> None:
        """Show only the fields that apply: the fraction or the folder; the checkpoint or the width."""
        folder = self.validation.value == "folder"
        self.val_fraction.visible, self.val_dir.visible = not folder, folder
        self.init.visible = self.start_from.value == "checkpoint"
        self.width_.visible = self.start_from.value == "scratch"

    def _start_model_mpp(self) -> float | None:
        from napari_histoseg.engine.jobs import default_model_path
        from napari_histoseg.model.checkpoint import read_card

        if self.start_from.value == "checkpoint" and self.init.value is not None:
            path = self.init.value.path
        else:  # the default model, and for a model from scratch the bundled one's data (CoNSeP)
            path = default_model_path()
        try:
            return read_card(path).mpp if path is not None else None
        except (OSError, ValueError):
            return None

    def _start_changed(self, _=None) -> None:
        self._update_visibility()
        if self._mpp_source == "card":
            mpp = self._start_model_mpp()
            self._set_mpp(mpp, "card")

    def _set_mpp(self, mpp: float | None, source: str) -> None:
        self._mpp_source = source
        self._loading = True
        try:
            self.mpp.value = mpp or 0.0
        finally:
            self._loading = False
        if source == "card":
            self.mpp_note.value = (
                f"the model's resolution ({mpp:g} um/px, from its card): the images are taken to be at it"
                if mpp
                else "unknown: set the images' microns per pixel"
            )
        else:
            self.mpp_note.value = "entered by you"

    def _mpp_edited(self, _=None) -> None:
        if getattr(self, "_loading", False):
            return
        self._mpp_source = "entered"
        self.mpp_note.value = "entered by you"
        saved = load_settings(SECTION)
        saved["mpp"] = self.mpp.value
        save_settings(SECTION, saved)

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
        from napari_histoseg.training.corrections import FINETUNE_DEFAULTS

        if self.train_dir.value is None:
            raise ValueError("choose a training folder (with input/ and gt/ inside)")
        train_dir = str(self.train_dir.value)
        if not Path(train_dir).is_dir():
            raise ValueError(f"the training folder {train_dir} does not exist")
        if self.validation.value == "folder" and self.val_dir.value is None:
            raise ValueError("choose a validation folder, or validate on a fraction of the training images")
        try:
            lr = None if self.lr.value.strip().lower() in ("", "auto") else float(self.lr.value)
        except ValueError:
            raise ValueError(f"learning rate {self.lr.value!r} is not a number (or auto)") from None
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
        out_root = self.out_dir.value or Path(train_dir).parent
        # Fine-tuning: a gentle optimiser with a warm-up (docs/fine-tuning.md); "auto" learning rate: its default.
        finetune = {k: v for k, v in FINETUNE_DEFAULTS.items() if k not in ("lr", "trainable")}
        if lr is None:
            lr = FINETUNE_DEFAULTS["lr"] if init is not None else 1e-4
        trainable = self.trainable.value
        if trainable == "auto":
            trainable = FINETUNE_DEFAULTS.get("trainable", "all") if init is not None else "all"
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
            trainable=trainable,
            **(finetune if init is not None else {}),
        ).validated()

    def start(self) -> None:
        """Start training with the form's settings (errors become notifications)."""
        from napari_histoseg.jobs.train import train_job

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
            lambda cancel: train_job(config, should_stop=cancel.is_set),
            on_event=self._event,
            on_done=self._done,
            on_error=self._failed,
            on_finished=self._finished,
            label=Path(config.out).name,
            stop_on_cancel=False,
        )

    def cancel(self) -> None:
        """Stop after the current step; the best checkpoint so far is kept and listed."""
        self.runner.cancel()
        self.cancel_button.enabled = False

    def _failed(self, exc: Exception) -> None:
        self.status.value = f"failed: {exc}"  # the status line says it too: a pop-up may be clipped
        show_error(f"Training failed: {exc}")

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _event(self, progress) -> None:
        from napari_histoseg.training.train import EpochEvent

        event = progress.detail
        if isinstance(event, EpochEvent):
            self.plot.add(event.train_loss, event.score)
            from napari_histoseg.training.evaluate import format_metrics
            from napari_histoseg.training.review import format_review

            review = format_review(event.val)  # corrected pairs: agreement with the corrections, change elsewhere
            self.status.value = (
                f"epoch {event.epoch}/{event.epochs}: loss {event.train_loss:.4f}, score {event.score:.3f} "
                f"(best {event.best_score:.3f} at epoch {event.best_epoch})\n{review or format_metrics(event.val)}"
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
        folder = self.pairs_dir.value
        try:
            if image is None or labels is None:
                raise ValueError("choose an image layer and a Labels layer painted with classes 1-3")
            if folder is None:
                raise ValueError("choose a pairs folder (it gets input/ and gt/)")
            box = L.visible_box(self.viewer, labels) if self.pair_extent.value == "current view" else None
            pixels, classes = L.pair_arrays(image, labels, box)
            reviewed, mpp = review_of_pair(image, labels, box, classes)  # only the corrected cells will teach
            name = unique_name(folder, image.name)
            input_path, _ = save_pair(pixels, classes, folder, name, reviewed=reviewed, mpp=mpp)
        except ValueError as exc:
            show_error(f"Cannot add a training pair: {exc}")
            return
        if self.train_dir.value is None:
            self.train_dir.value = folder
        save_settings(SECTION, snapshot(self._persisted))
        show_info(f"Added training pair {input_path.stem} ({classes.shape[0]} x {classes.shape[1]} px) to {folder}")
