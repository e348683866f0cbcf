"""The size model (engine/scale_regressor.py): shapes, crops, and that the shipped weights read scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoseg.engine.mpp_estimate import estimate_mpp, resample
from napari_histoseg.engine.scale_regressor import (
    CROP,
    WEIGHTS,
    ScaleNet,
    ScaleReading,
    crops,
    load_scale_model,
    predict_log2_mpp,
)


def test_the_network_gives_one_value_per_tile_of_any_size() -> None:
    model = ScaleNet().eval()
    with torch.no_grad():
        assert model(torch.zeros((2, 3, CROP, CROP), dtype=torch.uint8)).shape == (2,)
        assert model(torch.zeros((1, 3, 96, 160), dtype=torch.uint8)).shape == (1,)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # ships in the package


def test_weights_of_any_width_load(tmp_path) -> None:
    """load_scale_model reads the stage widths off the weights, so a narrower or wider model loads as trained."""
    from safetensors.torch import save_file

    trained = ScaleNet((16, 24, 40)).eval()
    path = tmp_path / "narrow.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    loaded = load_scale_model(path)
    x = torch.randint(0, 255, (1, 3, CROP, CROP), dtype=torch.uint8)
    with torch.no_grad():
        assert loaded.head.in_features == 40 and torch.allclose(loaded(x), trained(x))


def test_crops_cover_the_tile() -> None:
    tile = np.arange(300 * 200 * 3, dtype=np.uint32).reshape(300, 200, 3).astype(np.uint8)
    parts = crops(tile)
    assert len(parts) == 3 * 2 and all(p.shape == (CROP, CROP, 3) for p in parts)
    assert np.array_equal(parts[0], tile[:CROP, :CROP]) and np.array_equal(parts[-1], tile[-CROP:, -CROP:])
    assert len(crops(tile[:100])) == 1  # smaller than a crop: the tile as it is


def test_reading_spread_is_over_tiles_or_else_over_crops() -> None:
    reading = ScaleReading([np.log2([0.4, 0.4]), np.log2([0.5]), np.log2([0.6, 0.6])])
    assert reading.tile_mpps == pytest.approx([0.4, 0.5, 0.6]) and reading.spread == pytest.approx(0.2)
    assert reading.mpp == pytest.approx(0.5)  # the median crop
    assert ScaleReading([np.log2([0.5, 0.5])]).spread == 0.0
    assert ScaleReading([np.log2([0.5])]).spread == 1.0


def test_a_small_image_is_read_once_with_low_confidence() -> None:
    """Tiles that a small image clips to the same crop count once; one crop cannot say how far to trust it."""
    image = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    est = estimate_mpp(image, tiles=4, size_model=ScaleNet().eval())
    assert est.tiles == 1 and est.confidence == "low" and est.mpp > 0 and est.nuclei == 0
    assert "size model on 1 tile," in est.text


def test_shipped_weights_read_a_2x_downsample_as_one_step_coarser(consep_dir) -> None:
    """A real CoNSeP val patch (0.25 um/px) and its 2x downsample: log2 um/px about 1 apart."""
    from skimage.io import imread

    assert WEIGHTS.exists(), f"the size model's weights must ship in the package: {WEIGHTS}"
    torch.set_num_threads(1)
    patch = imread(sorted((consep_dir / "val" / "input").glob("*.png"))[0])[..., :3]
    model = load_scale_model()
    native = float(np.median(predict_log2_mpp(model, crops(patch))))
    half = float(predict_log2_mpp(model, [resample(patch, 0.5)])[0])
    assert half - native == pytest.approx(1.0, abs=0.35)
    assert 2**native == pytest.approx(0.25, rel=0.4)
