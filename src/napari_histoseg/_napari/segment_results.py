"""The Segment widget's results: the labels layer of a run (a slide's store, or crops pasted into an array),
the readout, and counting the cells of a result (again after each correction)."""

from __future__ import annotations

import time

from napari.utils.notifications import show_error, show_info

from . import layers as L
from .edits import on_edits_settled
from .job_meter import MeterReading
from .readout import cellularity_headline
from .segment_job import SegmentRequest, measure_job
from .workers import Cancelled

REFRESH_S = 0.5
TYPER_LINE = "the cell typer's (a second look at each cell from a 40 um crop)"


class ResultsMixin:
    """Showing and measuring results; mixed into :class:`~.segment_widget.SegmentWidget` (its viewer, runners,
    readout and form)."""

    def _progress(self, request: SegmentRequest, event) -> None:
        if request.out is None or event.phase != "segmenting" or event.unit != "block":
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

    def _show_view(self, outcome) -> list[int]:
        """Show a slide's view result in its own layer, placed over the slide; returns its class counts."""
        plan = outcome.view.plan
        origin = [int(plan.box[0]), int(plan.box[1])]
        counts = L.array_counts(outcome.view.labels)
        meta = {"class_counts": L.counts_dict(counts), "summary": outcome.summary}
        meta[L.VIEW_KEY] = {"level": plan.level, "origin": origin}
        self.last_layer = L.show_labels(
            self.viewer,
            self._target,
            outcome.view.labels,
            metadata=meta,
            replace=not self.new_layer.value,
            multiscale=False,
            outline=self.outline.value,
            **L.view_geometry(self._target, origin, plan.downsample),
        )
        return counts

    def _done(self, request: SegmentRequest, outcome, kept: list) -> None:
        cancelled = isinstance(outcome, Cancelled)
        if cancelled:
            outcome = outcome.partial
            if outcome is None or (request.out is None and not outcome.crops):
                self.result.set_text("Cancelled: nothing finished")
                show_info(f"Segmentation of {request.name} cancelled before anything finished")
                return
        self.last_outcome = outcome
        if outcome.view is not None:
            counts = self._show_view(outcome)
        elif request.out is not None:
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
        typer = (labels.metadata.get("summary") or {}).get("cell_typer")
        if typer is not None:
            details += "\nCell types: " + (TYPER_LINE if typer else "the network's (cell typer off)")
        self.result.set_text(cellularity_headline(readout["whole"]), details)
        if self.cellularity_map.value:
            from .cellularity import cellularity_image

            name = f"{labels.name} tumor cellularity"
            for layer in [layer for layer in self.viewer.layers if layer.name.startswith(name)]:
                self.viewer.layers.remove(layer)
            self.viewer.add_layer(cellularity_image(outcome.grid, labels, name=name))


def format_counts(counts: list[int]) -> str:
    """Pixels per class of a result."""
    return ", ".join(f"{name} {n:,}" for name, n in L.counts_dict(counts).items())


def pixel_headline(counts: list[int]) -> str:
    """The headline without cell counting: the tumor share of the cell pixels."""
    cells = counts[1] + counts[2]
    return f"Tumor {counts[1] / cells:.1%} of cell pixels" if cells else "No cells found"
