"""The cell typer (engine/cell_typer.py): crops, resampling, retyping a class map, and its place in inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_histoseg.classes import BACKGROUND, BOUNDARY, NON_TUMOR, TUMOR
from napari_histoseg.engine.cell_typer import (
    CROP,
    WEIGHTS,
    CellTyper,
    crops_at,
    load_cell_typer,
    retype_labels,
    to_typer_grid,
    typer_crops,
)


class DarkIsTumor(nn.Module):
    """A stand-in typer: tumor when the crop's centre is dark."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, :, CROP // 2 - 2 : CROP // 2 + 2, CROP // 2 - 2 : CROP // 2 + 2].mean(dim=(1, 2, 3))
        return torch.stack([c - 0.5, 0.5 - c], dim=1) * 10 + self.p


class ContradictsTheSegmentation(nn.Module):
    """A stand-in 4-channel typer: the opposite of the labels channel at the crop's centre."""

    in_channels = 4

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = x[:, 3, CROP // 2 - 2 : CROP // 2 + 2, CROP // 2 - 2 : CROP // 2 + 2].mean(dim=(1, 2))
        return torch.stack([own, -own], dim=1) * 10 + self.p


def test_crops_are_centred_and_mirrored_at_edges():
    image = torch.rand(3, 100, 120)
    crops = crops_at(image, np.array([[50.2, 60.0], [0, 0]]))
    assert crops.shape == (2, 3, CROP, CROP)
    assert torch.equal(crops[0], image[:, 10:90, 20:100])
    # Past the top-left corner the crop mirrors the image (reflect: row -k is row k).
    assert torch.equal(crops[1][:, CROP // 2 - 3, CROP // 2], image[:, 3, 0])
    assert crops_at(image, np.zeros((0, 2))).shape == (0, 3, CROP, CROP)


def test_small_image_is_replicated_not_an_error():
    assert crops_at(torch.rand(3, 20, 30), np.array([[10, 15]])).shape == (1, 3, CROP, CROP)


def test_context_view_is_the_same_cell_twice_as_wide():
    image = torch.zeros(1, 200, 200)
    image[:, 90:110, 90:110] = 1.0  # a cell at (100, 100), 20 px wide
    crops = typer_crops(image, np.array([[99.5, 99.5]]), context=2)
    assert crops.shape == (1, 2, CROP, CROP)
    near, wide = crops[0, 0], crops[0, 1]
    # Both views are centred on the cell; in the wide one it is half as large (10 of 80 px across).
    assert near[CROP // 2, CROP // 2] == 1 and wide[CROP // 2, CROP // 2] == 1
    assert int((near[CROP // 2] > 0.5).sum()) == 20 and int((wide[CROP // 2] > 0.5).sum()) == 10
    assert torch.equal(typer_crops(image, np.array([[99.5, 99.5]])), crops[:, :1])


def test_typer_with_context_round_trips_through_its_weights_file(tmp_path):
    from safetensors.torch import save_file

    model = CellTyper(in_channels=4, context=2).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 8, CROP, CROP)).shape == (2, 2)
    path = tmp_path / "typer.safetensors"
    save_file(model.state_dict(), str(path), metadata=model.metadata())
    loaded = load_cell_typer.__wrapped__(path)  # not the cached bundled one
    assert (loaded.in_channels, loaded.context, loaded.views) == (4, 2, 2)
    x = torch.rand(3, 8, CROP, CROP)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    # Weights saved before the metadata: one view, channels from the first convolution.
    save_file(CellTyper(in_channels=4).state_dict(), str(path))
    old = load_cell_typer.__wrapped__(path)
    assert (old.in_channels, old.views) == (4, 1)


def test_typer_grid_is_half_size_at_40x():
    grid, scale = to_typer_grid(torch.rand(3, 200, 100), 0.25)
    assert scale == 0.5 and grid.shape == (3, 100, 50)
    same, one = to_typer_grid(torch.rand(3, 64, 64), 0.5)
    assert one == 1.0 and same.shape == (3, 64, 64)


def test_retype_sets_each_cell_from_its_crop_and_keeps_the_rest():
    labels = np.zeros((120, 120), np.uint8)
    image = torch.ones(3, 120, 120)
    labels[20:40, 20:40] = NON_TUMOR  # a dark cell called non-tumor: becomes tumor
    labels[20, 20:40] = BOUNDARY
    image[:, 20:40, 20:40] = 0.1
    labels[70:90, 70:90] = TUMOR  # a pale cell called tumor: becomes non-tumor
    labels[100:102, 10:12] = TUMOR  # a speck under the cell rules' smallest cell: left alone
    labels[60:70, 20:30] = TUMOR  # a dark cell of 6 um^2: the typer's call, unless an area rule says non-tumor
    image[:, 60:70, 20:30] = 0.1
    out = retype_labels(labels, image, 0.25, DarkIsTumor())
    assert (out[21:40, 20:40] == TUMOR).all()
    assert (out[20, 20:40] == BOUNDARY).all()
    assert (out[70:90, 70:90] == NON_TUMOR).all()
    assert (out[100:102, 10:12] == TUMOR).all()
    assert (out[60:70, 20:30] == TUMOR).all()
    assert (retype_labels(labels, image, 0.25, DarkIsTumor(), min_tumor_um2=10)[60:70, 20:30] == NON_TUMOR).all()
    assert (retype_labels(labels, image, 0.25, DarkIsTumor(), min_tumor_um2=5)[60:70, 20:30] == TUMOR).all()
    assert (out[labels == BACKGROUND] == BACKGROUND).all()
    assert labels[70, 70] == TUMOR  # the input is not modified


def test_retype_uses_the_offset_into_a_larger_image():
    labels = np.zeros((60, 60), np.uint8)
    labels[20:40, 20:40] = NON_TUMOR
    image = torch.ones(3, 100, 100)
    image[:, 40:60, 40:60] = 0.1  # the cell's pixels, 20 px down and right of the labels' origin
    assert (retype_labels(labels, image, 0.5, DarkIsTumor(), offset=(20, 20))[20:40, 20:40] == TUMOR).all()
    assert (retype_labels(labels, image, 0.5, DarkIsTumor())[20:40, 20:40] == NON_TUMOR).all()


def test_a_four_channel_typer_sees_the_segmentations_call_where_the_labels_lie():
    labels = np.zeros((60, 60), np.uint8)
    labels[20:40, 20:40] = TUMOR
    labels[0:15, 45:60] = NON_TUMOR
    out = retype_labels(labels, torch.ones(3, 100, 100), 0.5, ContradictsTheSegmentation(), offset=(20, 20))
    assert (out[20:40, 20:40] == NON_TUMOR).all() and (out[0:15, 45:60] == TUMOR).all()


def test_bundled_weights_load_and_a_wrong_file_is_named(tmp_path):
    assert WEIGHTS.is_file()
    model = load_cell_typer()
    assert isinstance(model, CellTyper) and not model.training
    bad = tmp_path / "not_a_typer.safetensors"
    bad.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not_a_typer.safetensors"):
        load_cell_typer(bad)


def test_inference_with_the_typer_changes_only_cell_types(brca_dir):
    """On a breast carcinoma image (site A8, where the bundled model calls carcinoma cells non-tumor)."""
    from skimage.io import imread

    from napari_histoseg.engine.infer import InferenceSettings, run
    from napari_histoseg.engine.jobs import load_model, segment_image

    path = sorted((brca_dir / "val" / "input").glob("TCGA-A8-*.png"))[0]
    image = imread(path)[..., :3]
    model, card = load_model(None)
    plain = run(segment_image(image, model, card, InferenceSettings(device="cpu", cell_typer=False), mpp=0.5)).labels
    labels = run(segment_image(image, model, card, InferenceSettings(device="cpu", cell_typer=True), mpp=0.5)).labels
    cell = np.isin(plain, (TUMOR, NON_TUMOR))
    assert np.array_equal(labels[~cell], plain[~cell])  # background and boundary untouched
    assert np.isin(labels[cell], (TUMOR, NON_TUMOR)).all()
    assert (labels != plain).any()  # the typer had a say


def test_settings_record_the_typer_and_the_predictor_carries_it():
    from napari_histoseg.engine.infer import InferenceSettings
    from napari_histoseg.engine.jobs import make_predictor
    from napari_histoseg.model.resunetpp import ModelConfig, build_model

    assert InferenceSettings(cell_typer=True).result_settings()["cell_typer"] is True  # a resumed run must match
    assert InferenceSettings(cell_typer=False).result_settings()["cell_typer"] is False
    net = build_model(ModelConfig.scaled(0.25))
    assert isinstance(make_predictor(net, InferenceSettings(device="cpu", cell_typer=True)).typer, CellTyper)
    assert make_predictor(net, InferenceSettings(device="cpu")).typer is None


def test_cli_takes_the_typer_option():
    import argparse

    from napari_histoseg.cli.common import add_inference_options, settings_of

    parser = argparse.ArgumentParser()
    add_inference_options(parser, slide_options=True)
    assert settings_of(parser.parse_args(["--cell-typer"])).cell_typer is True
    assert settings_of(parser.parse_args(["--no-cell-typer"])).cell_typer is False
    assert settings_of(parser.parse_args([])).cell_typer is None  # decided by the model


def test_the_typer_is_on_by_default_for_the_bundled_model_only():
    from napari_histoseg.engine.infer import InferenceSettings
    from napari_histoseg.engine.jobs import load_model
    from napari_histoseg.model.checkpoint import ModelCard

    _, bundled = load_model(None)
    other = ModelCard(**{**bundled.to_dict(), "sha256": "0" * 64})
    assert InferenceSettings().for_model(bundled).cell_typer is True
    assert InferenceSettings().for_model(other).cell_typer is False
    assert InferenceSettings(cell_typer=False).for_model(bundled).cell_typer is False
    assert InferenceSettings(cell_typer=True).for_model(other).cell_typer is True
