"""Segmenting a slide's view: the level the engine picks, the view rounded to whole tiles, read from the right
place, in memory."""

from __future__ import annotations

import numpy as np
import pytest

import _tiny
from _pyramids import real_tissue, write_pyramid
from napari_histoseg.engine.infer import InferenceSettings
from napari_histoseg.engine.jobs import SegmentationError, load_model
from napari_histoseg.jobs.progress import drive
from napari_histoseg.jobs.segment import segment_array_job
from napari_histoseg.jobs.view import MAX_VIEW_COMPUTE_PIXELS, plan_view, segment_view_job

SHAPES = [(4096, 4096), (2048, 2048), (1024, 1024)]


def test_the_view_is_rounded_out_to_tiles_of_the_level_the_model_reads() -> None:
    plan = plan_view((1000, 1000, 1500, 1700), SHAPES, [0.25, 0.5, 1.0], 0.5, 256)
    assert (plan.level, plan.downsample, plan.factor, plan.tile) == (1, 2.0, 1.0, 256)
    assert plan.box == (256, 256, 768, 1024)  # level px 500..750 x 500..850, out to multiples of 256
    assert plan.level0_box == (512, 512, 1536, 2048)
    assert plan.fits


def test_a_model_finer_than_the_slide_reads_smaller_tiles_of_level_0() -> None:
    # A 20x slide (0.5 um/px) and a 40x model: level 0 is upsampled 2x, so a 256 px tile covers 128 level px.
    plan = plan_view((100, 300, 200, 390), [(2000, 3000)], [0.5], 0.25, 256)
    assert (plan.level, plan.factor, plan.tile) == (0, 2.0, 128)
    assert plan.box == (0, 256, 256, 512)


def test_the_view_is_clipped_to_the_level_and_a_huge_view_does_not_fit() -> None:
    assert plan_view((3000, 3000, 4096, 4096), SHAPES, [0.25, 0.5, 1.0], 0.5, 256).box == (1280, 1280, 2048, 2048)
    whole = plan_view((0, 0, 4096, 4096), SHAPES, [0.25, 0.5, 1.0], 0.25, 256)
    assert whole.compute_pixels == 4096 * 4096 and whole.fits
    side = int(np.sqrt(MAX_VIEW_COMPUTE_PIXELS)) * 2
    assert not plan_view((0, 0, side, side), [(side, side)], [0.25], 0.25, 256).fits


def test_the_entered_resolution_overrides_the_file(tmp_path) -> None:
    # The file says 0.25 um/px; the user says 0.5: level 0 is then already at the model's 0.5.
    plan = plan_view((0, 0, 300, 300), SHAPES, [0.25, 0.5, 1.0], 0.5, 256, input_mpp=0.5)
    assert (plan.level, plan.factor) == (0, 1.0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return _tiny.tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_a_view_job_segments_the_tiles_under_the_view_of_the_level_the_model_reads(tmp_path, tiny_checkpoint):
    """A 3-level pyramid at 0.25 um/px and a model at 0.5: the view is read from level 1, exactly where it lies."""
    rgb = real_tissue(1024, 1024)
    slide = write_pyramid(tmp_path / "p.tif", rgb, 3, mpp=0.25, compression=None)
    settings = InferenceSettings(tile=128, device="cpu", stain_normalize=False, opening_radius=0)
    model, card = load_model(tiny_checkpoint)
    events = []
    outcome = drive(segment_view_job(slide, (300, 420, 520, 700), model, card, settings), events.append)

    assert outcome.plan.level == 1 and outcome.plan.box == (128, 128, 384, 384)
    assert outcome.labels.shape == (256, 256) and outcome.labels.dtype == np.uint8
    assert any(e.phase == "segmenting" for e in events)
    import tifffile

    level1 = tifffile.imread(slide, level=1)
    same = drive(segment_array_job(level1, model, card, settings, regions=[outcome.plan.box], mpp=0.5))
    [(_, expected)] = same.crops
    np.testing.assert_array_equal(outcome.labels, expected)


def test_a_view_too_large_for_memory_is_refused_naming_the_file(tmp_path, tiny_checkpoint, monkeypatch):
    from napari_histoseg.jobs import view

    slide = write_pyramid(tmp_path / "p.tif", real_tissue(512, 512), 1, mpp=0.5, compression=None)
    monkeypatch.setattr(view, "MAX_VIEW_COMPUTE_PIXELS", 256 * 256)
    model, card = load_model(tiny_checkpoint)
    settings = InferenceSettings(tile=128, device="cpu")
    with pytest.raises(SegmentationError, match=r"p\.tif: the view is too large"):
        drive(segment_view_job(slide, (0, 0, 512, 512), model, card, settings))
