"""The Segment widget's resolution estimate: the image's microns per pixel read by the size model."""

from __future__ import annotations

from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from .job_meter import JobMeter
from .resolution_field import MPP_KEY
from .workers import Cancelled


class EstimateMixin:
    """Estimate and record an image's resolution; mixed into :class:`~.segment_widget.SegmentWidget`."""

    def estimate_resolution(self, _=None) -> None:
        """Estimate the chosen image's microns per pixel (the size model on a few tissue tiles) in a worker."""
        from .segment_job import estimate_job

        image = self.image.value
        if image is None or self.estimator.running:
            return
        if not image.rgb:
            show_error(f"Cannot estimate the resolution: layer {image.name!r} is not an RGB image")
            return
        meter = JobMeter()
        self.resolution.estimate.enabled = False
        self.resolution.note.value = "estimating from a few tissue tiles..."
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
