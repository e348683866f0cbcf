"""Segment widget: a form that starts :func:`~.segment_job.segment_job` in a worker and shows the result layer."""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info

from napari_histoseg.export_pairs import safe_name

from . import layers as L
from .model_registry import registry_for
from .readout import readout_label
from .segment_job import SegmentOutcome, SegmentRequest, measure_job, outcome_from_store, segment_job
from .settings import load_settings, restore, save_settings, snapshot
from .workers import Cancelled, JobRunner, device_choices

SECTION = "segment"
EXTENTS = ("whole image", "current view", "shapes")
REFRESH_S = 0.5


def default_output_dir() -> Path:
    """Where slide results go unless the user picks a folder."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-histoseg", appauthor=False)) / "predictions"


class SegmentWidget(Container):
    """Choose an image, a model and settings; segment in the background; get a coloured Labels layer."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.runner = JobRunner("Segmenting")
        self.measurer = JobRunner("Measuring cells")
        self._pending_measure = None
        self.last_outcome: SegmentOutcome | None = None
        self.last_layer = None
        self._target = None
        self._last_refresh = 0.0

        self.image = ComboBox(label="image", choices=self._layers(Image))
        self.model = ComboBox(label="model", choices=self._models)
        self.add_model = FileEdit(label="add checkpoint", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.batch_size = SpinBox(label="batch size", min=1, max=512, value=8)
        self.tile = SpinBox(label="tile (px)", min=64, max=2048, step=32, value=256)
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.75, step=0.05, value=0.25)
        self.opening = SpinBox(label="opening radius", min=0, max=20, value=2)
        self.block = SpinBox(label="block (px)", min=256, max=8192, step=256, value=1024)
        self.skip_background = CheckBox(text="skip background (slides)", value=True)
        self.stain_normalize = CheckBox(text="stain normalisation", value=True)
        self.stain_normalize.tooltip = (
            "map the slide's H&E colours onto the model's training data (Reinhard); "
            "off for slides from the lab the model was trained on"
        )
        self.test_time_flips = CheckBox(text="test-time flips (4x slower, more accurate)", value=False)
        self.test_time_flips.tooltip = "average the model's output over the four flips of each tile"
        self.extent = RadioButtons(label="segment", choices=EXTENTS, value=EXTENTS[0])
        self.shapes = ComboBox(label="regions", choices=self._layers(Shapes))
        self.output_dir = FileEdit(label="slide output folder", mode="d", value=default_output_dir())
        self.new_layer = CheckBox(text="new layer (keep the previous result)", value=False)
        self.measure = CheckBox(text="cells and tumor cellularity (per region too)", value=True)
        self.cellularity_map = CheckBox(text="cellularity map layer", value=False)
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.scheduler.tooltip = (
            "slides only: a dask scheduler address (tcp://host:8786) or local:N; empty = this process"
        )
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.result = readout_label()
        self.extend([
            self.image, self.model, self.add_model, self.device, self.batch_size, self.tile, self.overlap,
            self.opening, self.block, self.skip_background, self.stain_normalize, self.test_time_flips, self.extent,
            self.shapes,
            self.output_dir,
            self.new_layer, self.measure, self.cellularity_map, self.scheduler, self.run_button,
            self.cancel_button, self.result,
        ])  # fmt: skip
        self._persisted = {
            "device": self.device, "batch_size": self.batch_size, "tile": self.tile, "overlap": self.overlap,
            "opening": self.opening, "block": self.block, "skip_background": self.skip_background,
            "stain_normalize": self.stain_normalize, "test_time_flips": self.test_time_flips,
            "extent": self.extent, "output_dir": self.output_dir, "scheduler": self.scheduler,
            "measure": self.measure, "cellularity_map": self.cellularity_map,
        }  # fmt: skip
        restore(self._persisted, load_settings(SECTION))

        self.add_model.changed.connect(self._add_checkpoint)
        self.registry.changed.connect(self._model_added)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)

    # --- choices --------------------------------------------------------------------------------------
    def _layers(self, kind):
        return lambda _widget=None: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _models(self, _widget=None):
        return [(entry.label, entry) for entry in self.registry.entries]

    def _layers_changed(self, _event=None) -> None:
        self.image.reset_choices()
        self.shapes.reset_choices()

    def _add_checkpoint(self, path) -> None:
        if path and Path(path).is_file():
            self.registry.add(path)

    def _model_added(self, entry) -> None:
        self.model.reset_choices()
        self.model.value = entry

    # --- run ----------------------------------------------------------------------------------------------
    def request(self) -> SegmentRequest:
        """The job the form describes (raises ``ValueError`` naming what is missing or wrong)."""
        from napari_histoseg.engine.infer import InferenceSettings

        image: Image | None = self.image.value
        if image is None:
            raise ValueError("choose an image layer to segment")
        if not image.rgb:
            raise ValueError(f"layer {image.name!r} is not an RGB image; choose an H&E image layer")
        if self.model.value is None:
            raise ValueError("no model: add a checkpoint file (.safetensors) or train one")
        settings = InferenceSettings(
            tile=self.tile.value,
            overlap=self.overlap.value,
            block=self.block.value,
            opening_radius=self.opening.value,
            skip_background=self.skip_background.value,
            stain_normalize=self.stain_normalize.value,
            test_time_flips=self.test_time_flips.value,
            batch_size=self.batch_size.value,
            device=self.device.value,
        )
        regions = self._regions(image)
        request = SegmentRequest(image.name, self.model.value.path, settings, regions=regions)
        if image.multiscale:
            path = image.metadata.get("path")
            if not path:
                raise ValueError(f"multiscale layer {image.name!r} was not opened from a slide file by napari-histoseg")
            request.slide_path = Path(path)
            request.out = self._store_path(image)
            request.scheduler = self.scheduler.value.strip() or None
        else:
            request.image = image.data
            request.mpp = image.metadata.get("mpp")
        return request

    def _regions(self, image: Image) -> list[L.Box] | None:
        if self.extent.value == "current view":
            return [L.visible_box(self.viewer, image)]
        if self.extent.value == "shapes":
            if self.shapes.value is None:
                raise ValueError("choose a Shapes layer whose shapes mark the regions to segment")
            return L.shape_boxes(self.shapes.value, image)
        return None

    def _store_path(self, image: Image) -> Path:
        folder = Path(self.output_dir.value)
        path = folder / f"{safe_name(image.name)}.labels.zarr"
        k = 1
        while self.new_layer.value and path.exists():
            k += 1
            path = folder / f"{safe_name(image.name)}_{k}.labels.zarr"
        return path

    def start(self) -> None:
        """Start segmenting with the form's settings (errors become notifications)."""
        if self.runner.running:
            return
        try:
            request = self.request()
        except ValueError as exc:
            show_error(f"Cannot segment: {exc}")
            return
        save_settings(SECTION, snapshot(self._persisted))
        self._target = self.image.value
        self._last_refresh = 0.0
        self.result.value = "running..."
        kept: list = []
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.runner.start(
            lambda cancel: segment_job(request, cancel, kept),
            on_event=lambda event: self._progress(request, event),
            on_done=lambda outcome: self._done(request, outcome, kept),
            on_error=lambda exc: show_error(f"Segmentation of {request.name} failed: {exc}"),
            on_finished=self._finished,
            partial=lambda: outcome_from_store(request.out) if request.out else SegmentOutcome(crops=list(kept)),
            label=request.name,
        )

    def cancel(self) -> None:
        """Stop the running job; what was finished is kept and shown."""
        self.runner.cancel()
        self.cancel_button.enabled = False

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    # --- results ----------------------------------------------------------------------------------------
    def _progress(self, request: SegmentRequest, event) -> None:
        if request.out is None or not hasattr(event, "blocks_done"):
            return
        now = time.monotonic()
        if self.last_layer is None or self.last_layer.metadata.get("store") != str(request.out):
            self._show_store(request, {})
        elif now - self._last_refresh > REFRESH_S:
            self.last_layer.refresh()
        self._last_refresh = now

    def _show_store(self, request: SegmentRequest, metadata: dict):
        from napari_histoseg.io.store import LabelStore

        store = LabelStore.open(request.out)
        data, geometry = L.store_layer_data(store, self._target)
        metadata = {"store": str(request.out), **metadata}
        self.last_layer = L.show_labels(
            self.viewer, self._target, data, metadata=metadata, replace=not self.new_layer.value, **geometry
        )
        return self.last_layer

    def _done(self, request: SegmentRequest, outcome, kept: list) -> None:
        cancelled = isinstance(outcome, Cancelled)
        if cancelled:
            outcome = outcome.partial
            if outcome is None or (request.out is None and not outcome.crops):
                self.result.value = "cancelled: nothing finished"
                show_info(f"Segmentation of {request.name} cancelled before anything finished")
                return
        self.last_outcome = outcome
        if request.out is not None:
            counts = outcome.counts
            meta = {"class_counts": L.counts_dict(counts), "summary": outcome.summary}
            self._show_store(request, meta)
        else:
            layer = L.find_result_layer(self.viewer, self._target) if not self.new_layer.value else None
            data = layer.data if layer is not None and not layer.multiscale else None
            shape = L.image_shape(self._target)
            for box, labels in outcome.crops:
                data = L.paste_region(data, shape, box, labels)
            counts = L.array_counts(data)
            meta = {"class_counts": L.counts_dict(counts), "summary": outcome.summary}
            self.last_layer = L.show_labels(
                self.viewer, self._target, data, metadata=meta, replace=not self.new_layer.value, multiscale=False
            )
        self.result.value = ("cancelled; kept: " if cancelled else "") + format_counts(counts)
        if cancelled:
            show_info(f"Segmentation of {request.name} cancelled; finished blocks are kept")
        elif self.measure.value:
            self.measure_cells(self.last_layer)

    def measure_cells(self, labels) -> None:
        """Count cells and tumor cellularity of a result (and of each region of the Shapes layer) in a worker."""
        from .cellularity import labels_mpp, shapes_to_regions

        if self.measurer.running:  # measure the newest result once the older measurement has stopped
            self._pending_measure = labels
            self.measurer.cancel()
            return
        shapes = self.shapes.value
        regions = shapes_to_regions(shapes, labels) if shapes is not None and len(shapes.data) else []
        source = list(labels.data) if labels.multiscale else labels.data
        self.measurer.start(
            lambda cancel: measure_job(source, regions, labels_mpp(labels), cancel),
            on_done=lambda outcome: self._measured(labels, outcome),
            on_error=lambda exc: show_error(f"Measuring the cells of {labels.name} failed: {exc}"),
            on_finished=self._measure_pending,
            label=labels.name,
            describe=lambda e: (e.blocks_done, e.blocks_total, f"{e.cells:,} cells"),
        )

    def _measure_pending(self) -> None:
        labels, self._pending_measure = self._pending_measure, None
        if labels is not None:
            self.measure_cells(labels)

    def _measured(self, labels, outcome) -> None:
        if outcome is None or isinstance(outcome, Cancelled):
            return
        readout = outcome.readout
        labels.metadata["cellularity"] = {"whole": readout["whole"], "regions": readout["regions"]}
        self.result.value = f"{self.result.value}\n{readout['text']}"
        if self.cellularity_map.value:
            from .cellularity import cellularity_image

            name = f"{labels.name} tumor cellularity"
            for layer in [layer for layer in self.viewer.layers if layer.name.startswith(name)]:
                self.viewer.layers.remove(layer)
            self.viewer.add_layer(cellularity_image(outcome.grid, labels, name=name))


def format_counts(counts: list[int]) -> str:
    """The readout of a result's pixels per class and the tumor share of cell pixels."""
    cells = counts[1] + counts[2]
    share = f"{counts[1] / cells:.1%} of cell pixels are tumor" if cells else "no cells found"
    named = ", ".join(f"{name}: {n:,}" for name, n in L.counts_dict(counts).items())
    return f"{named}\n{share}"
