"""The Segment widget's "current view": the area a run of the view will segment, said before it starts.

An image in memory: the visible pixels. A slide: the view rounded out to whole network tiles, segmented in memory
into its own layer (:mod:`napari_histoseg.jobs.view`); a view too large for that goes through the slide's store, in
the blocks it touches.
"""

from __future__ import annotations

from napari.layers import Image

from napari_histoseg.jobs.view import ViewPlan, plan_view

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
        image = self.image.value
        if image.multiscale:
            try:
                plan = self._view_plan(image)
            except (ValueError, RuntimeError):
                plan = None
            if plan is not None and plan.fits:
                text += f": the view, rounded to {self.tile.value} px tiles, into a layer of its own"
            else:
                text += f": the view is large, so the {self.block.value} px blocks it touches, into the slide's result"
        self.view_note.value = text

    def view_area_text(self) -> str:
        """The size of the area "current view" segments now (a slide: the view rounded to tiles, or to blocks)."""
        image = self.image.value
        y0, x0, y1, x1 = self._view_box(image)
        mpp = self.resolution.value
        h, w = y1 - y0, x1 - x0
        return area_text(h * mpp if mpp else None, w * mpp if mpp else None, h, w)

    def _view_box(self, image: Image) -> L.Box:
        """The level-0 box a run of the view computes."""
        box = L.visible_box(self.viewer, image)
        if not image.multiscale:
            return box
        plan = self._view_plan(image, box)
        if plan.fits:
            return plan.level0_box
        return L.round_to_blocks(box, L.image_shape(image), self.block.value, plan.downsample)

    def _view_plan(self, image: Image, box: L.Box | None = None) -> ViewPlan:
        """Where a view run of a slide reads and writes (the level the engine picks, the box rounded to tiles)."""
        levels = image.metadata.get("level_mpp") or [None]
        model = self.model.value
        model_mpp = card_mpp(model.path) if model is not None else None
        shapes = [(int(lv.shape[0]), int(lv.shape[1])) for lv in image.data]
        box = L.visible_box(self.viewer, image) if box is None else box
        level0_mpp = self.resolution.value
        return plan_view(box, shapes, levels, model_mpp, self.tile.value, input_mpp=level0_mpp)

    def _view_request_box(self, image: Image) -> L.Box | None:
        """The visible level-0 box when a slide's view is segmented in memory; None when it goes through the store."""
        if not image.multiscale or self.extent.value != "current view":
            return None
        box = L.visible_box(self.viewer, image)
        return box if self._view_plan(image, box).fits else None
