"""The jobs layer: one store policy for CLI and widget, one progress event type, one consumer of cells."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import _tiny
from _tiny import tissue_rgb, write_slide
from napari_histoseg.engine.infer import InferenceSettings
from napari_histoseg.io.export import Frame
from napari_histoseg.io.store import LabelStore
from napari_histoseg.jobs.measure import measure_cells, readout_job, write_slide_outputs
from napari_histoseg.jobs.progress import Progress, drive
from napari_histoseg.jobs.segment import OtherSettingsError, SlideRequest, segment_slide_job


@pytest.fixture
def slide(tmp_path) -> Path:
    return write_slide(tmp_path / "s.tif", tissue_rgb((512, 512)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _tiny.tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _settings(tile: int) -> InferenceSettings:
    return InferenceSettings(tile=tile, block=256, device="cpu", skip_background=False)


def test_a_store_made_with_other_settings_is_kept_unless_asked(slide, tmp_path, tiny_checkpoint):
    out = tmp_path / "s.zarr"
    events = []
    first = drive(segment_slide_job(SlideRequest(slide, out, _settings(128), tiny_checkpoint)), events.append)
    assert all(isinstance(e, Progress) for e in events)
    blocks = [e for e in events if e.phase == "segmenting"]
    assert [e.done for e in blocks] == list(range(1, len(blocks) + 1)) and blocks[-1].total == len(blocks) == 4
    assert events[-1].phase == "writing" and not first.resumed_all
    before = LabelStore.open(out).levels[0][:]

    # The same settings resume: nothing is computed again.
    again = drive(segment_slide_job(SlideRequest(slide, out, _settings(128), tiny_checkpoint)))
    assert again.resumed_all

    # Other settings: refused, the store untouched (the widget's job as the CLI's).
    with pytest.raises(OtherSettingsError, match="other settings"):
        drive(segment_slide_job(SlideRequest(slide, out, _settings(64), tiny_checkpoint)))
    np.testing.assert_array_equal(LabelStore.open(out).levels[0][:], before)

    from napari_histoseg._napari.segment_job import SegmentRequest, segment_job

    request = SegmentRequest("s", tiny_checkpoint, _settings(64), slide_path=slide, out=out, mpp=0.5)
    with pytest.raises(OtherSettingsError):
        drive(segment_job(request, threading.Event()))
    assert LabelStore.open(out).info["settings"]["tile"] == 128

    request.overwrite = True  # asked: replaced
    outcome = drive(segment_job(request, threading.Event()))
    assert outcome.store_path == out and LabelStore.open(out).info["settings"]["tile"] == 64


def test_every_consumer_of_cells_gets_the_same_cells(slide, tmp_path, tiny_checkpoint):
    out = tmp_path / "s.zarr"
    drive(segment_slide_job(SlideRequest(slide, out, _settings(128), tiny_checkpoint)))
    store = LabelStore.open(out)

    class Sink:
        def __init__(self) -> None:
            self.rows = 0

        def write(self, table) -> None:
            self.rows += len(table)

    sink = Sink()
    events = []
    mpp = Frame.of_store(store).label_mpp  # the cell rules in the map's pixels, as the export applies them
    measured = drive(measure_cells(store, mpp=mpp, sinks=[sink], keep_table=True, block=128), events.append)
    assert [e.phase for e in events] == ["counting cells"] * 16 and events[-1].done == events[-1].total == 16
    assert sink.rows == len(measured.table) == measured.result.cells > 0
    assert measured.cellularity.tumor_cells + measured.cellularity.non_tumor_cells == measured.result.cells

    # The export and the widget's readout, with the same cell blocks (a random model's blobs outgrow the halo, so
    # other blocks could split them otherwise): the same cells.
    exported = write_slide_outputs(store, block=128)
    assert exported["cells"] == measured.result.cells
    readout = drive(readout_job(store.levels[0], [], mpp=mpp))
    whole = drive(measure_cells(store, mpp=mpp))  # the readout's default blocks
    assert readout.readout["whole"] == whole.cellularity.to_dict()
