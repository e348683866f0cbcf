"""The default model shipped inside the package: present, verified, documented, and used when no model is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.io import imread, imsave

from napari_histoseg.cli import main
from napari_histoseg.engine.jobs import default_model_path, load_model
from napari_histoseg.io.store import LabelStore


def test_bundled_model_loads_with_a_verified_card():
    path = default_model_path()
    assert path is not None and path.name == "default.safetensors"
    model, card = load_model(None)  # sha256 checked on load
    assert card.mpp == pytest.approx(0.25)
    assert card.config == model.config.to_dict()
    assert "CoNSeP" in card.training["data"] and "research use" in card.training["data"]
    assert card.training["command"].startswith("scripts/train_default.sh")
    metrics = card.metrics["consep_val"]
    assert 0 < metrics["detection_f1"] <= 1 and 0 <= metrics["type_f1_tumor"] <= 1
    assert [c["name"] for c in card.classes] == ["background", "tumor cell", "non-tumor cell", "cell boundary"]
    assert card.stain_stats is not None  # the training colours slides are mapped onto


def test_predict_uses_the_bundled_model_by_default(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    imsave(folder / "x.png", np.full((64, 64, 3), 230, np.uint8))
    assert main(["predict", str(folder), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"]["name"] == "histoseg-default-consep"
    assert imread(tmp_path / "out" / "x_pred.png").shape == (64, 64, 3)


@pytest.mark.slow
def test_demo_finds_tumor_and_other_cells_on_the_sample_slide(tmp_path, capsys):
    """The README's first command: the bundled model on the bundled CMU-1 region (another lab's stain, 20x)."""
    assert main(["demo", "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cells = summary["cellularity"]
    # Without stain normalisation the bundled model finds 91 cells here, none of them tumor (--no-stain-norm).
    assert cells["cells"] > 1000 and cells["tumor_cells"] > 100 and cells["non_tumor_cells"] > 100
    info = LabelStore.open(tmp_path / "cmu-1-small-region.zarr").info
    assert info["stain"]["target"] == load_model(None)[1].stain_target
