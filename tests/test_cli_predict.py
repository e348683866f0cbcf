"""``histoseg predict`` on a folder of images and on a real slide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imread, imsave

from napari_histoseg.classes import CLASS_COLORS
from napari_histoseg.cli import main
from napari_histoseg.io.store import LabelStore
from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_checkpoint(path, model, card_for(model, mpp=0.5, name="tiny-random"))


def test_predict_folder_writes_colour_masks(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    imsave(folder / "a.png", rng.integers(0, 255, (300, 260, 3), dtype=np.uint8))
    imsave(folder / "small.png", rng.integers(0, 255, (40, 50), dtype=np.uint8))  # greyscale, smaller than a tile
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(tiny_checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 2
    pred = imread(out / "a_pred.png")
    assert pred.shape == (300, 260, 3)
    colours = {tuple(c) for c in pred.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in CLASS_COLORS.tolist()}
    assert imread(out / "small_pred.png").shape == (40, 50, 3)
    assert sum(summary["per_image"]["a.png"]) == 300 * 260


@pytest.mark.slow
def test_predict_slide_writes_store_and_resumes(tmp_path, cmu_svs, tiny_checkpoint, capsys):
    out = tmp_path / "cmu.zarr"
    args = ["predict", str(cmu_svs), "--out", str(out), "--model", str(tiny_checkpoint), "--block", "1024", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    store = LabelStore.open(out)
    assert store.levels[0].shape == (2967, 2220)  # labels at the slide's own resolution (0.499 um/px)
    assert summary["resample_factor"] == 1.0  # the model's 0.5 um/px matches the slide
    assert store.info["complete"] is True
    assert sum(summary["pixels_per_class"].values()) == 2967 * 2220
    assert summary["blocks"] == 9
    # A second run with the same settings finds every block done.
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["blocks_resumed"] == 9
    assert again["pixels_per_class"] == summary["pixels_per_class"]


def test_predict_bad_inputs(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    assert main(["predict", str(bad), "--out", str(tmp_path / "o.zarr"), "--model", str(tiny_checkpoint)]) == 2
    assert "notes.tif" in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    shutil.copy(tiny_checkpoint, broken)
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--model", str(broken)]) == 2
    assert "broken" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_slide_records_its_stain_normalisation(tmp_path, cmu_svs, capsys):
    model = build_model(ModelConfig.scaled(0.25)).eval()
    target = {"method": "reinhard", "lab_mean": [69.0, 24.0, -19.6], "lab_std": [14.7, 8.8, 10.7]}
    checkpoint = save_checkpoint(tmp_path / "stained", model, card_for(model, mpp=0.5, stain_target=target))
    out = tmp_path / "cmu.zarr"
    args = ["predict", str(cmu_svs), "--out", str(out), "--model", str(checkpoint), "--no-cells", "--json"]
    assert main(args) == 0
    info = LabelStore.open(out).info
    assert info["settings"]["stain_normalize"] is True
    assert info["stain"]["target"] == target
    source = info["stain"]["source"]["lab_mean"]
    assert 40 < source[0] < 60 and source[1] > 20  # CMU-1's tissue: darker and redder than the target
    assert main([*args, "--no-stain-norm", "--overwrite"]) == 0
    info = LabelStore.open(out).info
    assert info["settings"]["stain_normalize"] is False and info["stain"] is None
    capsys.readouterr()
