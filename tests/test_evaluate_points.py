"""`histoseg evaluate` on point-labelled folders: the table by hospital, JSON, the plot; real BRCA-M2C images."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from _trainsets import write_point_set
from napari_histoseg.cli import main
from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    return save_checkpoint(tmp_path_factory.mktemp("m") / "tiny", model, card_for(model, mpp=0.25))


def test_evaluate_a_point_folder_prints_sites_and_writes_the_plot(tmp_path, tiny_model, capsys):
    root = write_point_set(tmp_path / "a", n=2, prefix="TCGA-A7-X")
    write_point_set(tmp_path / "b", n=1, prefix="TCGA-AC-Y", seed=5)
    for sub in ("input", "points"):
        for f in (tmp_path / "b" / sub).iterdir():
            f.rename(root / sub / f.name)
    plot = tmp_path / "cellularity.png"
    code = main(
        ["evaluate", str(root), "--model", str(tiny_model), "--mpp", "0.25", "--tumor-classes", "2",
         "--plot", str(plot), "--fp32"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "3 images" in lines[0] and "within 3 um" in lines[0]
    assert lines[1].startswith("site") and "tumor F1" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["all", "A7", "AC"]
    image = iio.imread(plot)
    assert image.ndim == 3 and image.shape[0] > 300
    code = main(["evaluate", str(root), "--model", str(tiny_model), "--mpp", "0.25", "--tumor-classes", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["by_group"]) == {"all", "A7", "AC"} and len(result["rows"]) == 3
    assert result["rows"][0]["points"] > 0
    args = ["evaluate", str(root), "--model", str(tiny_model), "--mpp", "0.25", "--tumor-classes", "2", "--json"]
    assert main([*args, "--sites", "AC"]) == 0
    assert set(json.loads(capsys.readouterr().out)["by_group"]) == {"all", "AC"}


def test_evaluate_a_point_folder_without_tumor_classes_is_a_one_line_error(tmp_path, tiny_model, capsys):
    root = write_point_set(tmp_path / "a", n=1)
    assert main(["evaluate", str(root), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--tumor-classes" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bundled_model_on_real_brca_images_from_three_hospitals(brca_dir, tmp_path, capsys):
    root = tmp_path / "brca"
    for sub in ("input", "points"):
        (root / sub).mkdir(parents=True)
    names = sorted(p.stem for p in (brca_dir / "val" / "input").glob("*.png"))
    chosen = [next(n for n in names if n.startswith(f"TCGA-{site}-")) for site in ("A7", "A8", "AC")]
    for name in chosen:
        (root / "input" / f"{name}.png").symlink_to(brca_dir / "val" / "input" / f"{name}.png")
        (root / "points" / f"{name}.csv").symlink_to(brca_dir / "val" / "points" / f"{name}.csv")
    assert main(["evaluate", str(root), "--mpp", "0.5", "--tumor-classes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    overall = result["by_group"]["all"]
    assert set(result["by_group"]) == {"all", "A7", "A8", "AC"}
    # The bundled model finds most annotated nuclei (recall 0.88 on the whole val split).
    assert overall["detection_recall"] > 0.6 and overall["points"] > 300
    assert 0 <= overall["cellularity_mae"] <= 1
    assert 0 <= overall["type_f1_tumor"] <= 1 and 0 <= overall["type_f1_tumor_paper"] <= 1  # both formulas
    assert result["settings"]["cell_typer"] is True  # the bundled model's default
    areas = result["cell_areas_um2"]
    assert areas["cells"] > 100 and 5 < areas["median"] < 80
