"""Resolution estimate from nucleus size (engine/mpp_estimate.py) and the --mpp option."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_histoseg.engine.mpp_estimate import (
    MppEstimate,
    crop_origin,
    estimate_mpp,
    nucleus_areas,
    resample,
    tissue_tile_centres,
)
from napari_histoseg.engine.mpp_option import mpp_option


def test_mpp_option_takes_a_positive_number_or_auto() -> None:
    assert mpp_option("0.5") == 0.5
    assert mpp_option(" AUTO ") == "auto"
    for bad in ("0", "-1", "nan", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            mpp_option(bad)


def test_nucleus_areas_count_cells_and_drop_specks() -> None:
    labels = np.zeros((40, 40), np.uint8)
    labels[2:12, 2:12] = 1  # 100 px tumor cell
    labels[20:26, 20:26] = 2  # 36 px non-tumor cell
    labels[30:32, 30:32] = 2  # a 4 px speck
    labels[0:40, 15] = 3  # boundary class is not a cell
    assert sorted(nucleus_areas(labels, min_px=10).tolist()) == [36, 100]


def test_crops_fit_the_image_and_resampling_scales() -> None:
    assert crop_origin((100, 300), (5, 295), 64) == (0, 236, 64)
    assert crop_origin((50, 300), (25, 150), 64) == (0, 125, 50)  # shrunk to the image
    tile = np.zeros((40, 60, 3), np.uint8)
    assert resample(tile, 2.0).shape == (80, 120, 3)
    assert resample(tile, 0.5).shape == (20, 30, 3)


def test_tissue_tiles_lie_on_tissue() -> None:
    image = np.full((1024, 1024, 3), 245, np.uint8)  # glass
    image[512:, 512:] = (180, 90, 160)  # pink tissue in one quarter
    centres = tissue_tile_centres(image, 4, 128)
    assert len(centres) == 4 and len(set(centres)) == 4
    assert all(y >= 512 and x >= 512 for y, x in centres)


def test_estimate_text_states_value_and_confidence() -> None:
    est = MppEstimate(0.49, "high", 412, 4, 0.06, [0.5, 0.49])
    assert est.text == "0.49 um/px (confidence high: 412 nuclei on 4 tiles, tiles agree within 6%)"


@pytest.mark.slow
def test_estimate_on_the_cmu_slide_is_within_20_percent(cmu_svs) -> None:
    """The sample slide is a real 20x scan (0.499 um/px), JPEG quality 30, from neither training set. The nucleus
    scan measured 0.7 there (+40%); the size model must be within 20%."""
    from napari_histoseg.io.slide import open_slide

    with open_slide(cmu_svs) as slide:
        est = estimate_mpp(slide.levels)
    assert est.mpp == pytest.approx(0.499, rel=0.2), est.text
    assert est.confidence in ("high", "medium") and est.tiles == 8


@pytest.mark.slow
def test_estimate_on_breast_val_images_resampled_to_known_resolutions(brca_dir) -> None:
    """A BRCA-M2C val image (about 0.5 um/px; the size model never saw val) shown at 40x, 20x, 14x and 10x."""
    from skimage.io import imread

    path = sorted((brca_dir / "val" / "input").glob("*.png"))[-1]
    image = imread(path)[..., :3]
    for mpp in (0.35, 0.5, 0.7, 1.0):
        est = estimate_mpp(resample(image, 0.5 / mpp), tiles=4)
        assert est.mpp == pytest.approx(mpp, rel=0.2), f"{path.name} at {mpp}: {est.text}"


def test_crossing_interpolates_where_the_area_meets_the_typical_one() -> None:
    from napari_histoseg.engine.mpp_estimate import crossing

    scales, counts = (0.25, 0.5, 1.0), (50, 80, 60)
    mpp, crossed = crossing(scales, (6.0, 12.0, 24.0), counts, typical=12.0)
    assert crossed and mpp == pytest.approx(0.5)
    mpp, crossed = crossing(scales, (6.0, 8.0, 16.0), counts, typical=12.0)  # between 0.5 and 1.0, in log-log
    assert crossed and 0.5 < mpp < 1.0
    assert mpp == pytest.approx(0.5 * 2 ** (np.log(12 / 8) / np.log(2)))
    mpp, crossed = crossing(scales, (6.0, 10.0, 7.0), counts, typical=12.0)  # never reaches it: the closest
    assert not crossed and mpp == 0.5


def test_predict_mpp_auto_uses_the_estimate_for_images_and_the_file_for_slides(tmp_path, monkeypatch, capsys):
    """``histoseg predict --mpp auto``: a PNG states no resolution, so it is estimated (here a stand-in estimate of
    0.25 um/px against a model card at 0.5: the image is downsampled 2x); a slide's own value is kept."""
    import json

    import torch
    from skimage.io import imsave

    from napari_histoseg.cli import main
    from napari_histoseg.engine import mpp_estimate
    from napari_histoseg.model.checkpoint import card_for, save_checkpoint
    from napari_histoseg.model.resunetpp import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    checkpoint = save_checkpoint(tmp_path / "tiny", model, card_for(model, mpp=0.5, name="tiny-random"))
    asked = []

    def stand_in(image, *_, **__):  # the size model needs no segmentation model
        asked.append(np.asarray(image).shape)
        return MppEstimate(0.25, "high", 200, 4, 0.05, [0.25])

    monkeypatch.setattr(mpp_estimate, "estimate_mpp", stand_in)
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "a.png", np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    args = ["predict", str(folder), "--out", str(tmp_path / "out"), "--model", str(checkpoint), "--json"]
    assert main([*args, "--mpp", "auto"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert asked == [(256, 256, 3)]
    assert summary["resample_factor"] == {"a.png": 0.5}
    assert mpp_estimate.auto_mpp(np.zeros((8, 8, 3)), stated=0.499) == 0.499  # a stated value is not estimated
    assert len(asked) == 1
