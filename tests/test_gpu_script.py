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


@pytest.mark.slow
def test_gpu_script_trains_both_runs_and_returns_their_best(tmp_path):
    data = tmp_path / "consep"
    write_set(data / "train", n=2, size=64)
    write_set(data / "val", n=1, size=64, seed=5)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        "DATA": str(data),
        "OUT": str(out),
        "DEVICE": "cpu",
        "BUDGET_SECONDS": "1",  # past the budget after calibrating: one epoch each
        "PATCH": "64",
        "BATCH": "2",
        "WORKERS": "1",  # the loader processes too
    }
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
