"""Segment widget: a short form that starts :func:`~.segment_job.segment_job` in a worker and shows the result.

The form asks for the image (with its resolution), the model and what to segment; expert settings sit in a collapsed
"Advanced" section. Progress shows in the widget (phase, tile k of n, ETA); the readout leads with the tumor
cellularity.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from napari_histoseg.export_pairs import safe_name

from . import layers as L
from .edits import on_edits_settled, was_edited
from .form import PathField, Section, tip
from .job_meter import JobMeter, MeterReading
from .model_registry import registry_for
from .progress_panel import ProgressPanel
from .readout import ResultReadout, cellularity_headline
from .resolution_field import MPP_KEY, ResolutionField, layer_mpp
from .run_plan import area_text
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


TIPS = {
    "image": "the H&E image layer to segment (a slide opened with napari-histoseg, or an RGB image)",
    "resolution": "microns per pixel of the image at full resolution; the model resamples the image to the "
    "resolution it was trained at (the bundled model: 0.25 um/px, 40x). A 20x scan is about 0.5, a 40x scan 0.25",
    "model": "the network that segments: the bundled model, a checkpoint you added, or one you trained",
    "extent": "what to segment: the whole image, what the canvas shows now, or the regions drawn in a Shapes layer",
    "shapes": "the Shapes layer whose shapes (rectangles, polygons, ellipses) mark regions: segmented with "
    "'segment: shapes', and each measured on its own (cellularity per region)",
    "outline": "draw the cells as outlines instead of filled colour, to see the tissue under them",
    "add_model": "a checkpoint file (.safetensors, with its .json model card next to it) to add to the model list",
    "device": "where the network runs: auto picks a GPU (CUDA or Apple MPS) when there is one, else the CPU",
    "stain_normalize": "map the slide's H&E colours onto the model's training data (Reinhard); turn it off for "
    "slides from the lab the model was trained on",
    "test_time_flips": "average the model's output over the four flips of each tile: slightly more accurate, 4x slower",
    "measure": "after segmenting, count the cells and compute the tumor cellularity (per Shapes region too)",
    "cellularity_map": "add an image layer colouring each 256 px square by its tumor cellularity",
    "new_layer": "put the result in a new layer instead of replacing the previous result of this image",
    "output_dir": "slides only: the folder where the result store (<name>.labels.zarr) is written; a rerun resumes",
    "skip_background": "slides only: do not segment glass; the tissue is found on a low-resolution level",
    "batch_size": "tiles per network call; larger is faster on a GPU until its memory runs out",
    "tile": "size of the square the network sees, in pixels at the model's resolution",
    "overlap": "fraction by which neighbouring tiles overlap (blended, so no seams show)",
    "opening": "radius (px at the model's resolution) of the morphological opening that removes specks",
    "block": "slides: size of the blocks read, written and resumed as one unit",
    "run_button": "segment the chosen image (or the part chosen under 'segment') in the background",
    "cancel_button": "stop within a few seconds; finished tiles and blocks are kept and shown",
    "scheduler": "slides only: a dask scheduler address (tcp://host:8786) or local:N to spread the blocks over "
    "workers; empty: this process",
}


class SegmentWidget(Container):
    """Choose an image, a model and what to segment; segment in the background; get a coloured Labels layer.

    The form shows the few choices every run needs; the rest is in a collapsed "Advanced" section.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.runner = JobRunner("Segmenting")
        self.measurer = JobRunner("Counting cells")
        self.estimator = JobRunner("Estimating resolution")
        self._pending_measure = None
        self.last_outcome: SegmentOutcome | None = None
        self.last_layer = None
        self._target = None
        self._last_refresh = 0.0
        self._warned_unknown: set[int] = set()

        self.image = ComboBox(label="image", choices=self._layers(Image))
        self.resolution = ResolutionField()
        self.model = ComboBox(label="model", choices=self._models)
        self.extent = RadioButtons(label="segment", choices=EXTENTS, value=EXTENTS[0])
        self.shapes = ComboBox(label="regions", choices=self._layers(Shapes))
        self.view_note = Label(value="")
        self.view_note.native.setWordWrap(True)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressPanel()
        self.result = ResultReadout()
        self.outline = CheckBox(text="show cell outlines", value=False)

        self.add_model = PathField(label="add checkpoint", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.stain_normalize = CheckBox(text="stain normalisation", value=True)
        self.test_time_flips = CheckBox(text="test-time flips (4x slower)", value=False)
        self.measure = CheckBox(text="count cells (tumor cellularity)", value=True)
        self.cellularity_map = CheckBox(text="cellularity map layer", value=False)
        self.new_layer = CheckBox(text="new layer (keep the previous result)", value=False)
        self.output_dir = PathField(label="output folder", mode="d", value=default_output_dir())
        self.skip_background = CheckBox(text="skip background", value=True)
        self.batch_size = SpinBox(label="batch size", min=1, max=512, value=8)
        self.tile = SpinBox(label="tile (px)", min=64, max=2048, step=32, value=256)
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.75, step=0.05, value=0.25)
        self.opening = SpinBox(label="opening radius", min=0, max=20, value=2)
        self.block = SpinBox(label="block (px)", min=256, max=8192, step=256, value=1024)
        self.scheduler = LineEdit(label="dask scheduler", value="")
        for key, text in TIPS.items():
            tip(getattr(self, key), text)

        self.advanced = Section(
            "Advanced",
            [
                self.add_model, self.device, self.stain_normalize, self.test_time_flips, self.measure,
                self.cellularity_map, self.new_layer, self.output_dir, self.skip_background, self.batch_size,
                self.tile, self.overlap, self.opening, self.block, self.scheduler,
            ],
            tooltip="model file, device, stain normalisation, output folder, tiling and other expert settings",
        )  # fmt: skip
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.form = Container(widgets=[self.image, self.resolution, self.model, self.extent, self.shapes], labels=True)
        self.form.margins = (0, 0, 0, 0)
        self.extend([self.form, self.view_note, buttons, self.progress, self.result, self.outline, self.advanced])
        self._persisted = {
            "device": self.device,
            "batch_size": self.batch_size,
            "tile": self.tile,
            "overlap": self.overlap,
            "opening": self.opening,
            "block": self.block,
            "skip_background": self.skip_background,
            "stain_normalize": self.stain_normalize,
            "test_time_flips": self.test_time_flips,
            "output_dir": self.output_dir,
            "scheduler": self.scheduler,
            "measure": self.measure,
            "cellularity_map": self.cellularity_map,
        }  # fmt: skip  -- "segment: current view" is not kept: a new session starts with the whole image
        restore(self._persisted, load_settings(SECTION))

        self.add_model.path_changed.connect(self._add_checkpoint)
        self.registry.changed.connect(self._model_added)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._image_changed)
        self.resolution.spin.changed.connect(self._resolution_edited)
        self.resolution.estimate.changed.connect(self.estimate_resolution)
        self.extent.changed.connect(self._update_visibility)
        self.measure.changed.connect(self._update_visibility)
        self.outline.changed.connect(self._outline_changed)
        self.viewer.scene.camera.events.connect(self._view_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self._image_changed()

    # --- form state ---------------------------------------------------------------------------------------
    def _update_visibility(self, _=None) -> None:
        """Show only the controls that apply to the chosen image and extent."""
        image = self.image.value
        slide = image is not None and image.multiscale
        for widget in (self.output_dir, self.skip_background, self.block, self.scheduler):
            widget.visible = slide
        # Regions are segmented ("shapes") or measured (per-region cellularity) only when a Shapes layer exists.
        self.shapes.visible = self.extent.value == "shapes" or bool(self.shapes.choices)
        self.cellularity_map.visible = self.measure.value
        self.view_note.visible = self.extent.value == "current view"
        # The radio group is never squeezed by a taller row above it (a wrapped note).
        self.extent.native.setMinimumHeight(self.extent.native.minimumSizeHint().height())
        self._view_changed()

    def _image_changed(self, _=None) -> None:
        image = self.image.value
        mpp, source = layer_mpp(image) if image is not None else (None, "unknown")
        self._loading_resolution = True
        try:
            note = (image.metadata.get(MPP_KEY) or {}).get("note", "") if image is not None else ""
            self.resolution.display(mpp, source, note)
        finally:
            self._loading_resolution = False
        if image is not None and mpp is None and id(image) not in self._warned_unknown:
            self._warned_unknown.add(id(image))
            show_warning(
                f"Image {image.name!r} states no resolution (microns per pixel). Enter it in the Segment widget or "
                "press Estimate: at a wrong resolution most nuclei are missed."
            )
        self._update_visibility()

    def _resolution_edited(self, _=None) -> None:
        if getattr(self, "_loading_resolution", False):
            return
        image = self.image.value
        value = self.resolution.value
        if image is None:
            return
        if value is None:
            image.metadata.pop(MPP_KEY, None)
        else:
            image.metadata[MPP_KEY] = {"mpp": value, "source": "entered"}
        self.resolution.display(*layer_mpp(image))

    def _outline_changed(self, _=None) -> None:
        layer = self.last_layer
        if layer is not None and layer in self.viewer.layers:
            layer.contour = L.OUTLINE_PX if self.outline.value else 0

    def _view_changed(self, _event=None) -> None:
        if self.extent.value != "current view" or self.image.value is None:
            return
        try:
            text = f"will segment {self.view_area_text()}"
        except (ValueError, RuntimeError) as exc:
            text = str(exc)
        if self.image.value.multiscale:  # a slide store is written in whole blocks
            text += f": the {self.block.value} px blocks the view touches"
        self.view_note.value = text

    def view_area_text(self) -> str:
        """The size of the area "current view" segments now (for a slide: the blocks the view touches)."""
        image = self.image.value
        y0, x0, y1, x1 = self._view_box(image)
        mpp = self.resolution.value
        h, w = y1 - y0, x1 - x0
        return area_text(h * mpp if mpp else None, w * mpp if mpp else None, h, w)

    def _view_box(self, image: Image) -> L.Box:
        box = L.visible_box(self.viewer, image)
        if image.multiscale:
            return L.round_to_blocks(box, L.image_shape(image), self.block.value, self._slide_downsample(image))
        return box

    def _slide_downsample(self, image: Image) -> float:
        """Level-0 pixels per output pixel of a slide run (the level the engine will pick)."""
        from napari_histoseg.engine.resolution import plan_resolution

        levels = image.metadata.get("level_mpp") or [None]
        mpp = self.resolution.value
        model = self.model.value
        model_mpp = _card_mpp(model.path) if model is not None else None
        plan = plan_resolution(levels, model_mpp, input_mpp=mpp)
        shapes = [lv.shape for lv in image.data]
        return shapes[0][0] / shapes[plan.level][0]

    # --- choices --------------------------------------------------------------------------------------
    def _layers(self, kind):
        return lambda _widget=None: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _models(self, _widget=None):
        return [(entry.label, entry) for entry in self.registry.entries]

    def _layers_changed(self, _event=None) -> None:
        self.image.reset_choices()
        self.shapes.reset_choices()
        self._update_visibility()

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
        mpp = self.resolution.value
        if mpp is None:
            raise ValueError(
                f"image {image.name!r} states no resolution: enter its microns per pixel (e.g. 0.5 for a 20x scan, "
                "0.25 for 40x) or press Estimate"
            )
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
        request = SegmentRequest(image.name, self.model.value.path, settings, regions=regions, mpp=mpp)
        if image.multiscale:
            path = image.metadata.get("path")
            if not path:
                raise ValueError(f"multiscale layer {image.name!r} was not opened from a slide file by napari-histoseg")
            request.slide_path = Path(path)
            request.out = self._store_path(image)
            request.scheduler = self.scheduler.value.strip() or None
        else:
            request.image = image.data
        return request

    def _regions(self, image: Image) -> list[L.Box] | None:
        if self.extent.value == "current view":
            return [self._view_box(image)]
        if self.extent.value == "shapes":
            if self.shapes.value is None:
                raise ValueError("choose a Shapes layer whose shapes mark the regions to segment")
            return L.shape_boxes(self.shapes.value, image)
        return None

    def _store_path(self, image: Image) -> Path:
        folder = self.output_dir.value or default_output_dir()
        path = folder / f"{safe_name(image.name)}.labels.zarr"
        k = 1
        # A result the user corrected keeps its store too: painting a slide result writes into it.
        edited = any(lay.metadata.get(L.SOURCE_KEY) == image.name and was_edited(lay) for lay in self.viewer.layers)
        while (self.new_layer.value or edited) and path.exists():
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
        self.result.set_text(f"Segmenting {request.name}...")
        kept: list = []
        meter = JobMeter()
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.show_reading(meter.reading())
        self.runner.start(
            lambda cancel: segment_job(request, cancel, kept, meter),
            meter=meter,
            on_reading=self.progress.show_reading,
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
        if not self.measurer.running:
            self.progress.finish()

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
            self.viewer,
            self._target,
            data,
            metadata=metadata,
            replace=not self.new_layer.value,
            outline=self.outline.value,
            **geometry,
        )
        return self.last_layer

    def _done(self, request: SegmentRequest, outcome, kept: list) -> None:
        cancelled = isinstance(outcome, Cancelled)
        if cancelled:
            outcome = outcome.partial
            if outcome is None or (request.out is None and not outcome.crops):
                self.result.set_text("Cancelled: nothing finished")
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
                self.viewer,
                self._target,
                data,
                metadata=meta,
                replace=not self.new_layer.value,
                multiscale=False,
                outline=self.outline.value,
            )
        self._pixels = format_counts(counts)
        on_edits_settled(self.last_layer, self._edited)  # the readout follows the user's corrections
        if cancelled:
            self.result.set_text("Cancelled: finished blocks kept", self._pixels)
            show_info(f"Segmentation of {request.name} cancelled; finished blocks are kept")
        elif self.measure.value:
            self.result.set_text("Counting cells...", self._pixels)
            self.measure_cells(self.last_layer)
        else:
            self.result.set_text(pixel_headline(counts), self._pixels)

    def _edited(self, labels) -> None:
        """The user edited a result: recount it, so the readout says what the layer now holds."""
        if labels not in self.viewer.layers:
            return
        if not labels.multiscale:
            counts = L.array_counts(labels.data)
            self._pixels = format_counts(counts)
            if not self.measure.value:
                self.result.set_text(pixel_headline(counts), self._pixels)
        if self.measure.value:
            self.measure_cells(labels)

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
            on_error=lambda exc: show_error(f"Counting the cells of {labels.name} failed: {exc}"),
            on_finished=self._measure_pending,
            label=labels.name,
            describe=lambda e: (e.blocks_done, e.blocks_total, f"{e.cells:,} cells"),
            on_text=self._counting,
        )

    def _counting(self, done: int, total: int, _text: str) -> None:
        if not self.measurer.running:  # a late event (the bar's update can process the "finished" signal first)
            return
        self.progress.show_reading(MeterReading("counting cells", done, total, "block", None, None))

    def _measure_pending(self) -> None:
        labels, self._pending_measure = self._pending_measure, None
        if labels is not None:
            self.measure_cells(labels)
        elif not self.runner.running:
            self.progress.finish()

    def _measured(self, labels, outcome) -> None:
        if outcome is None or isinstance(outcome, Cancelled):
            return
        readout = outcome.readout
        labels.metadata["cellularity"] = {"whole": readout["whole"], "regions": readout["regions"]}
        details = f"{readout['text']}\nPixels: {getattr(self, '_pixels', '')}".strip()
        self.result.set_text(cellularity_headline(readout["whole"]), details)
        if self.cellularity_map.value:
            from .cellularity import cellularity_image

            name = f"{labels.name} tumor cellularity"
            for layer in [layer for layer in self.viewer.layers if layer.name.startswith(name)]:
                self.viewer.layers.remove(layer)
            self.viewer.add_layer(cellularity_image(outcome.grid, labels, name=name))

    # --- resolution estimate ----------------------------------------------------------------------------
    def estimate_resolution(self, _=None) -> None:
        """Estimate the chosen image's microns per pixel from its nuclei (bundled model) in a worker."""
        from .segment_job import estimate_job

        image = self.image.value
        if image is None or self.estimator.running:
            return
        if not image.rgb:
            show_error(f"Cannot estimate the resolution: layer {image.name!r} is not an RGB image")
            return
        meter = JobMeter()
        self.resolution.estimate.enabled = False
        self.resolution.note.value = "estimating from the nuclei of a few tissue tiles..."
        pixels = list(image.data) if image.multiscale else image.data  # pyramid levels, level 0 first
        self.estimator.start(
            lambda cancel: estimate_job(pixels, cancel, meter),
            meter=meter,
            on_reading=lambda r: setattr(self.resolution.note, "value", r.text),
            on_done=lambda estimate: self._estimated(image, estimate),
            on_error=lambda exc: show_error(f"Estimating the resolution of {image.name} failed: {exc}"),
            on_finished=lambda: setattr(self.resolution.estimate, "enabled", True),
            label=image.name,
        )

    def _estimated(self, image: Image, estimate) -> None:
        if estimate is None or isinstance(estimate, Cancelled):
            self._image_changed()
            return
        note = f"estimated: {estimate.text}"
        image.metadata[MPP_KEY] = {"mpp": estimate.mpp, "source": "estimated", "note": note}
        if self.image.value is image:
            self._image_changed()
        show_info(f"{image.name}: {note}")


@lru_cache(maxsize=16)
def _card_mpp(path: Path) -> float | None:
    """The resolution a checkpoint's model card states (cached: asked on every camera move)."""
    from napari_histoseg.model.checkpoint import read_card

    try:
        return read_card(path).mpp
    except (OSError, ValueError):  # only used for a size estimate
        return None


def format_counts(counts: list[int]) -> str:
    """Pixels per class of a result."""
    return ", ".join(f"{name} {n:,}" for name, n in L.counts_dict(counts).items())


def pixel_headline(counts: list[int]) -> str:
    """The headline without cell counting: the tumor share of the cell pixels."""
    cells = counts[1] + counts[2]
    return f"Tumor {counts[1] / cells:.1%} of cell pixels" if cells else "No cells found"
