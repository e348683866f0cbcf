"""Stain normalisation: colour statistics, the torch LAB transform, and where the engine applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from napari_histoseg.analysis.stain_stats import GLASS_L, LabStats, lab_stats
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import segment_image
from napari_histoseg.engine.stain_transform import ReinhardNormalizer, lab_to_rgb, normalizer_for, rgb_to_lab
from napari_histoseg.model.checkpoint import ModelCard, card_for, read_card, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model

TARGET = LabStats((69.0, 24.0, -19.6), (14.7, 8.8, 10.7))  # CoNSeP-like: light pink-purple


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


def _image(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def dark_tissue() -> np.ndarray:
    """Dark, saturated 'tissue' on a glass border (like the CMU-1 sample's stain)."""
    rng = np.random.default_rng(0)
    img = np.full((200, 240, 3), 245, np.uint8)
    tissue = np.stack([rng.normal(m, s, (160, 200)) for m, s in ((120, 30), (40, 20), (110, 25))])
    img[20:180, 20:220] = np.clip(tissue.transpose(1, 2, 0), 0, 255).astype(np.uint8)
    return img


def test_lab_transform_matches_scikit_image():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    lab = rgb_to_lab(_tensor(rgb)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, rgb2lab(rgb), atol=2e-3)
    back = lab_to_rgb(torch.from_numpy(rgb2lab(rgb)).permute(2, 0, 1).float()).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, lab2rgb(rgb2lab(rgb)), atol=1e-4)


def test_lab_stats_of_tissue_pixels_only(dark_tissue):
    stats = lab_stats(dark_tissue)
    lab = rgb2lab(dark_tissue).reshape(-1, 3)
    tissue = lab[lab[:, 0] < GLASS_L]
    assert len(tissue) < len(lab)  # the glass border is left out
    np.testing.assert_allclose(stats.mean, tissue.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, tissue.std(0), rtol=1e-6)
    # Pooled over two images = the statistics of their pixels together.
    pooled = lab_stats([dark_tissue[:100], dark_tissue[100:]])
    np.testing.assert_allclose(pooled.mean, stats.mean, rtol=1e-6)
    # A mask restricts the pixels further; too few tissue pixels give no statistics at all.
    mask = np.zeros(dark_tissue.shape[:2], bool)
    mask[20:120, 20:120] = True
    assert lab_stats(dark_tissue, mask).mean != stats.mean
    assert lab_stats(np.full((100, 100, 3), 250, np.uint8)) is None
    with pytest.raises(ValueError, match="RGB"):
        lab_stats(np.zeros((10, 10), np.uint8))


def test_lab_stats_validate_and_round_trip():
    assert LabStats.from_dict(TARGET.to_dict()) == TARGET
    with pytest.raises(ValueError, match="positive"):
        LabStats((50.0, 0.0, 0.0), (10.0, 0.0, 5.0))
    with pytest.raises(ValueError, match="finite"):
        LabStats((50.0, float("nan"), 0.0), (10.0, 1.0, 5.0))
    with pytest.raises(ValueError, match="reinhard"):
        LabStats.from_dict({"lab_mean": [1, 2, 3]})


def test_normalizer_moves_tissue_to_the_target_statistics(dark_tissue):
    source = lab_stats(dark_tissue)
    out = _image(ReinhardNormalizer(source, TARGET)(_tensor(dark_tissue)))
    moved = rgb2lab(out[20:180, 20:220]).reshape(-1, 3)  # all of the tissue (lab_stats would drop light pixels)
    before = rgb2lab(dark_tissue[20:180, 20:220]).reshape(-1, 3)
    assert np.abs(before.mean(0) - TARGET.mean).max() > 20
    np.testing.assert_allclose(moved.mean(0), TARGET.mean, atol=1.5)  # off by the clipping to the RGB gamut
    np.testing.assert_allclose(moved.std(0), TARGET.std, rtol=0.15)
    # Glass stays glass: the transform fades out near white.
    assert np.abs(out[:10].astype(int) - dark_tissue[:10].astype(int)).max() <= 2


def test_normalizer_identity_batches_and_none(dark_tissue):
    stats = lab_stats(dark_tissue)
    x = _tensor(dark_tissue)
    assert (ReinhardNormalizer(stats, stats)(x) - x).abs().max() < 1e-4
    norm = ReinhardNormalizer(stats, TARGET)
    batch = torch.stack([x, x.flip(-1)])
    torch.testing.assert_close(norm(batch)[1], norm(x.flip(-1)), atol=1e-5, rtol=0)
    assert normalizer_for(None, TARGET) is None and normalizer_for(stats, None) is None


def test_card_records_the_stain_target(tmp_path):
    model = build_model(ModelConfig.scaled(0.25))
    card = card_for(model, mpp=0.25, stain_target=TARGET.to_dict())
    path = save_checkpoint(tmp_path / "stained", model, card)
    assert read_card(path).stain_stats == TARGET
    d = card.to_dict()
    with pytest.raises(ValueError, match="stain_target: LAB std"):
        ModelCard.from_dict({**d, "stain_target": {"method": "reinhard", "lab_mean": [1, 2, 3], "lab_std": [1, 0, 1]}})
    del d["stain_target"]  # a card written before the field existed: no normalisation
    assert ModelCard.from_dict(d).stain_stats is None


def test_segment_image_feeds_the_model_normalised_colours(dark_tissue):
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25)).eval()
    card = card_for(model, mpp=0.25, stain_target=TARGET.to_dict())
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        for normalize in (True, False):
            settings = InferenceSettings(stain_normalize=normalize, skip_background=False, tile=128, block=256)
            run(segment_image(dark_tissue, model, card, settings))
    finally:
        hook.remove()
    on, off = seen[0], seen[-1]
    assert on.shape == off.shape
    lightness_on = rgb_to_lab(on[0])[0, 60:160, 60:160].mean().item()
    lightness_off = rgb_to_lab(off[0])[0, 60:160, 60:160].mean().item()
    source = lab_stats(dark_tissue)
    assert abs(lightness_off - source.mean[0]) < 3  # as the image is
    assert abs(lightness_on - TARGET.mean[0]) < 3  # as the training data was
