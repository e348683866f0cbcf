"""The Segment widget's "current view": the area a run of the view will segment, said before it starts."""

from __future__ import annotations

from napari.layers import Image

from . import layers as L
from .run_plan import area_text
from .segment_form import card_mpp


class ViewMixin:
    """What "segment: current view" covers; mixed into :class:`~.segment_widget.SegmentWidget`."""

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
        model_mpp = card_mpp(model.path) if model is not None else None
        plan = plan_resolution(levels, model_mpp, input_mpp=mpp)
        shapes = [lv.shape for lv in image.data]
        return shapes[0][0] / shapes[plan.level][0]
