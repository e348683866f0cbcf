"""A small version of the correct-and-fine-tune benchmark (benchmarks/bench_correct_finetune.py) on real data: the
loop the widget runs (correct cells from their points, fine-tune with the widget's defaults, score before and
after) must hand back a model that still finds every class."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_correct_finetune.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_correct_finetune", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_small_correct_and_fine_tune_loop_does_not_collapse(brca_dir, consep_dir, tmp_path) -> None:
    from napari_histoseg.training.corrections import FINETUNE_DEFAULTS

    figures = _bench().main(
        ["--quick", "--data", str(brca_dir / "train"), "--consep", str(consep_dir / "val"), "--out", str(tmp_path)]
    )
    [run] = figures["runs"]
    assert run["config"]["trainable"] == FINETUNE_DEFAULTS["trainable"]  # the widget's defaults
    assert run["classes_lost"] == [] and run["targets_met"]["no_class_lost"]
    assert run["held_after"]["tumor_cells"] > 0 and run["held_after"]["non_tumor_cells"] > 0
    assert run["consep_after"]["detection_f1"] > 0.3  # a working model, not an empty one
    before = figures["corrections"][figures["corrected_images"][0]]
    assert before["cells"] == 10 and before["recoloured"] + before["confirmed"] == 10
