"""scripts/gpu_train.sh, the one prepared call for a lent GPU machine, run here on the CPU as it runs there: the package
from src/ with napari, zarr, dask and Qt absent (blocked), a tiny set in its data layout, a short budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from _trainsets import write_set
from napari_histoseg.model.checkpoint import read_card

ROOT = Path(__file__).resolve().parents[1]
# Absent on the GPU machine: importing any of them there would fail the run.
BLOCKER = """
import importlib.abc, sys
ABSENT = {"napari", "zarr", "dask", "distributed", "qtpy", "PyQt6", "magicgui", "npe2", "imagecodecs"}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
"""


def _blocked_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a script run as on the GPU machine: the package from src/, the absent modules blocked."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}", **extra}


@pytest.mark.slow
def test_gpu_script_trains_both_runs_and_returns_their_best(tmp_path):
    data = tmp_path / "consep"
    write_set(data / "train", n=2, size=64)
    write_set(data / "val", n=1, size=64, seed=5)
    out = tmp_path / "out"
    env = _blocked_env(
        tmp_path,
        DATA=str(data),
        OUT=str(out),
        DEVICE="cpu",
        BUDGET_SECONDS="1",  # past the budget after calibrating: one epoch each
        PATCH="64",
        BATCH="2",
        WORKERS="1",  # the loader processes too
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 epochs each" in proc.stdout and "calibration: " in proc.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8  # what the device tool brings back
    for run in ("finetune", "scratch"):
        assert {f"{run}/best.safetensors", f"{run}/best.json", f"{run}/metrics.csv", f"{run}.log"} <= set(files)
        card = read_card(out / run / "best.safetensors")
        assert card.training["config"]["ema"] == 0.999 and card.mpp == 0.25
        assert load_file(out / run / "best.safetensors")  # complete weights
        assert proc.stdout.count(f"== {run}: histoseg evaluate") == 1
    assert read_card(out / "finetune" / "best.safetensors").training["init"]["loaded"] > 0  # from the bundled model
    assert read_card(out / "scratch" / "best.safetensors").training["init"] is None
    assert proc.stdout.count("detection") >= 2, proc.stdout  # both evaluations printed their metrics
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line: JSON for a caller
    assert summary["epochs"] == 1
    for run in ("finetune", "scratch"):
        assert summary["runs"][run]["best"] == str(out / run / "best.safetensors")
        assert summary["runs"][run]["evaluation"] is not None


def _packed_set(folder: Path, consep_dir: Path) -> None:
    """Real CoNSeP val patches in the layout ``train_scale_regressor.py --pack`` writes."""
    from PIL import Image

    folder.mkdir()
    patches = sorted((consep_dir / "val" / "input").glob("*.png"))
    names = ["train_consep_0.25_000", "train_brca_0.5_001", "val_consep_0.25_000", "val_brca_0.5_001"]
    for name, path in zip(names, patches, strict=False):
        Image.open(path).convert("RGB").save(folder / f"{name}.jpg", quality=95, subsampling=0)


@pytest.mark.slow
def test_size_model_gpu_script_trains_three_widths(tmp_path, consep_dir):
    """scripts/gpu_scale.sh, as on the GPU server, on the CPU: three widths on one stream, weights that load."""
    from napari_histoseg.engine.scale_regressor import load_scale_model

    data = tmp_path / "packed"
    _packed_set(data, consep_dir)
    out = tmp_path / "out"
    env = _blocked_env(
        tmp_path, OUT=str(out), DATA=str(data), MINUTES="0.05", WORKERS="1", EVERY="2", BATCH="4", MONITOR="8"
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_scale.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8  # what the device tool brings back
    for widths in ((24, 32, 64, 96), (32, 64, 128, 192), (48, 96, 192, 256)):
        folder = out / "r" / ("w" + "-".join(map(str, widths)))
        assert f"{folder.name} step 2 train L1" in proc.stdout
        for name in ("scale_regressor.safetensors", "best.safetensors"):
            assert load_scale_model(folder / name).head.in_features == widths[-1]


@pytest.mark.slow
def test_gpu_check_compares_the_device_with_the_cpu(tmp_path, consep_dir):
    """scripts/gpu_check.py on the CPU with napari, zarr and dask absent: the same model on the same CPU agrees."""
    data = tmp_path / "packed"
    _packed_set(data, consep_dir)
    report_path = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--packed", str(data), "--out", str(report_path)],
        env=_blocked_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert report["device"] == "cpu" and len(report["regions"]) == 1
    [region] = report["regions"]
    assert region["agreement"] > 0.99 and region["cells"][1] > 0
    assert abs(region["cells"][0] - region["cells"][1]) <= 0.05 * region["cells"][1] + 2
