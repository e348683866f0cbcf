"""Segment widget: a short form that starts :func:`~.segment_job.segment_job` in a worker and shows the result.

The form asks for the image (with its resolution), the model and what to segment; expert settings sit in a collapsed
"Advanced" section. Progress shows in the widget (phase, tile k of n, ETA); the readout leads with the tumor
cellularity.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, RadioButtons
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_warning

from napari_histoseg.export_pairs import safe_name

from . import layers as L
from .edits import was_edited
from .form import Section
from .job_meter import JobMeter
from .model_registry import registry_for
from .progress_panel import ProgressPanel
from .readout import ResultReadout
from .resolution_field import MPP_KEY, ResolutionField, layer_mpp
from .segment_estimate import EstimateMixin
from .segment_form import EXTENTS, TIPS, AdvancedControls, add_tips, default_output_dir
from .segment_job import SegmentOutcome, SegmentRequest, outcome_from_store, segment_job
from .segment_results import ResultsMixin, format_counts, pixel_headline
from .segment_view import ViewMixin
from .settings import load_settings, restore, save_settings, snapshot
from .workers import JobRunner

SECTION = "segment"
__all__ = ["EXTENTS", "SegmentWidget", "default_output_dir", "format_counts", "pixel_headline"]


class SegmentWidget(ViewMixin, EstimateMixin, ResultsMixin, Container):
    """Choose an image, a model and what to segment; segment in the background; get a coloured Labels layer.

    The form shows the few choices every run needs; the rest is in a collapsed "Advanced" section
    (:class:`~.segment_form.AdvancedControls`). Its parts: results and cell counting (:class:`~.segment_results.
    ResultsMixin`), the current view's extent (:class:`~.segment_view.ViewMixin`), the resolution estimate
    (:class:`~.segment_estimate.EstimateMixin`).
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
        self._build_form()
        self._connect()
        self._image_changed()

    def _build_form(self) -> None:
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
        self.controls = AdvancedControls()
        for name, widget in vars(self.controls).items():  # the settings are the widget's attributes too (self.tile)
            setattr(self, name, widget)
        add_tips(self, TIPS)
        self.advanced = Section(
            "Advanced",
            self.controls.widgets,
            tooltip="model file, device, stain normalisation, output folder, tiling and other expert settings",
        )
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.form = Container(widgets=[self.image, self.resolution, self.model, self.extent, self.shapes], labels=True)
        self.form.margins = (0, 0, 0, 0)
        self.extend([self.form, self.view_note, buttons, self.progress, self.result, self.outline, self.advanced])
        # "segment: current view" is not kept: a new session starts with the whole image.
        self._persisted = self.controls.persisted()
        restore(self._persisted, load_settings(SECTION))

    def _connect(self) -> None:
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

    # --- form state ---------------------------------------------------------------------------------------
    def _update_visibility(self, _=None) -> None:
        """Show only the controls that apply to the chosen image and extent."""
        image = self.image.value
        slide = image is not None and image.multiscale
        for name in AdvancedControls.SLIDE_ONLY:
            getattr(self, name).visible = slide
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
        settings = self.controls.settings()
        view = self._view_request_box(image)
        regions = None if view is not None else self._regions(image)
        request = SegmentRequest(image.name, self.model.value.path, settings, regions=regions, mpp=mpp, view=view)
        if image.multiscale:
            path = image.metadata.get("path")
            if not path:
                raise ValueError(f"multiscale layer {image.name!r} was not opened from a slide file by napari-histoseg")
            request.slide_path = Path(path)
            if view is not None:  # segmented in memory, into a layer of its own: no store
                return request
            request.out = self._store_path(image)
            request.scheduler = self.scheduler.value.strip() or None
            request.overwrite = self.replace.value
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
        edited = any(
            lay.metadata.get(L.SOURCE_KEY) == image.name and L.VIEW_KEY not in lay.metadata and was_edited(lay)
            for lay in self.viewer.layers
        )  # a corrected view layer is in memory: the store is not it
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
            on_error=lambda exc: self._failed(request, exc),
            on_finished=self._finished,
            partial=lambda: outcome_from_store(request.out) if request.out else SegmentOutcome(crops=list(kept)),
            label=request.name,
        )

    def _failed(self, request: SegmentRequest, exc: Exception) -> None:
        from napari_histoseg.jobs.segment import OtherSettingsError

        hint = ""
        if isinstance(exc, OtherSettingsError):
            hint = " To replace it, tick Advanced > 'replace a result made with other settings'."
        show_error(f"Segmentation of {request.name} failed: {exc}.{hint}")

    def cancel(self) -> None:
        """Stop the running job; what was finished is kept and shown."""
        self.runner.cancel()
        self.cancel_button.enabled = False

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if not self.measurer.running:
            self.progress.finish()
