"""Evaluation on folder pairs: ``histoseg evaluate`` (the predict path) and validation during training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from _trainsets import _COLOURS, blob_image, write_set
from napari_histoseg.analysis.stain_stats import LabStats, lab_stats
from napari_histoseg.engine.stain_transform import ReinhardNormalizer
from napari_histoseg.jobs.evaluate import evaluate_folder_job, run_evaluation
from napari_histoseg.jobs.progress import Progress, drive
from napari_histoseg.model.checkpoint import CheckpointError, card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model
from napari_histoseg.training.evaluate import (
    EvalProgress,
    EvalResult,
    evaluate_model,
    format_metrics,
)
from napari_histoseg.training.image_files import read_mask
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import Sample, load_pairs

torch.set_num_threads(1)


class ColourOracle(nn.Module):
    """Classifies each pixel by its nearest synthetic class colour: near-perfect on ``_trainsets`` images."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig.scaled(0.25)
        self.register_buffer("colours", torch.tensor(_COLOURS / 255.0, dtype=torch.float32))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return -((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(dim=2) * 100


def samples(sizes: list[int]) -> list[Sample]:
    out = []
    for i, size in enumerate(sizes):
        image, labels, inst = blob_image(size, seed=i)
        out.append(Sample(f"s{i}", image, labels, inst.astype(np.int32)))
    return out


def run(generator):
    events = list(generator)
    assert isinstance(events[-1], EvalResult)
    assert all(isinstance(e, EvalProgress) for e in events[:-1])
    return events


def test_oracle_scores_near_perfect_and_batches_by_size():
    oracle = ColourOracle()
    data = samples([64, 64, 64, 96])
    events = run(evaluate_model(oracle, data, device="cpu", batch_size=2, class_weights=[1, 10, 10, 10]))
    result = events[-1]
    m = result.metrics
    assert result.images == 4 and events[-2].images_done == 4
    assert sorted(oracle.calls) == [(1, 3, 64, 64), (1, 3, 96, 96), (2, 3, 64, 64)]
    assert min(m["dice"]) > 0.95
    assert m["detection_f1"] == 1.0 and m["type_f1_tumor"] == 1.0
    assert m["n_true_cells"] == m["n_pred_cells"] > 0
    assert m["val_loss"] < 0.05


def test_large_images_are_windowed_and_match_whole_image_scores():
    data = samples([96, 104])
    whole = run(evaluate_model(ColourOracle(), data, device="cpu"))[-1].metrics
    oracle = ColourOracle()
    windowed = run(evaluate_model(oracle, data, device="cpu", whole_max=64))[-1].metrics
    assert all(shape[2:] == (256, 256) for shape in oracle.calls)  # windows, not whole images
    assert windowed["dice"] == pytest.approx(whole["dice"], abs=1e-3)
    assert windowed["detection_f1"] == whole["detection_f1"]


def test_an_untrained_checkpoint_on_folder_pairs(tmp_path):
    data_dir = write_set(tmp_path / "data", n=3, size=64)
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    ckpt = save_checkpoint(tmp_path / "m", model, card_for(model, mpp=0.25))
    seen = []
    result = run_evaluation(data_dir, ckpt, device="cpu", on_event=seen.append)
    assert result.images == 3 and [(e.done, e.total, e.unit) for e in seen] == [(k, 3, "image") for k in (1, 2, 3)]
    assert all(isinstance(e, Progress) and isinstance(e.detail, EvalProgress) for e in seen)
    assert result.model_mpp == 0.25 and result.checkpoint == str(ckpt)
    assert len(result.metrics["dice"]) == 4
    decoded = json.loads(result.to_json())  # strict JSON: NaN becomes null
    for value in decoded["metrics"].values():
        assert not (isinstance(value, float) and math.isnan(value))
    assert "Dice tumor cell" in format_metrics(result.metrics)


def test_opening_removes_specks_before_scoring():
    data = samples([64])
    noisy = data[0].image.copy()
    noisy[2:4, 2:4] = _COLOURS[1]  # a 2x2 "tumor" speck in the background
    data = [Sample("noisy", noisy, data[0].labels, data[0].inst)]
    opened = run(evaluate_model(ColourOracle(), data, device="cpu", opening_radius=2))[-1].metrics
    raw = run(evaluate_model(ColourOracle(), data, device="cpu", opening_radius=0))[-1].metrics
    assert opened["dice"][1] > raw["dice"][1]


def test_logit_bias_decides_the_classes():
    data = samples([64])
    weights = [1, 10, 10, 10]
    plain = run(evaluate_model(ColourOracle(), data, device="cpu", class_weights=weights))[-1]
    # A bias far larger than the oracle's margins makes every pixel background: no cells are predicted.
    biased = run(evaluate_model(ColourOracle(), data, device="cpu", class_weights=weights, logit_bias=[1e4, 0, 0, 0]))[
        -1
    ]
    assert plain.metrics["n_pred_cells"] > 0 and biased.metrics["n_pred_cells"] == 0
    assert biased.settings["logit_bias"] == [1e4, 0, 0, 0]
    # The loss stays the training loss of the raw logits.
    assert biased.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"])
    windowed = run(evaluate_model(ColourOracle(), data, device="cpu", whole_max=32, logit_bias=[1e4, 0, 0, 0]))[-1]
    assert windowed.metrics["n_pred_cells"] == 0


def test_stain_normalisation_maps_the_folder_colours_onto_the_card(tmp_path):
    data = samples([64, 64])
    source = lab_stats([s.image for s in data])
    far = LabStats((source.mean[0] - 30, source.mean[1] + 40, source.mean[2] - 40), tuple(v / 3 for v in source.std))
    plain = run(evaluate_model(ColourOracle(), data, device="cpu"))[-1]
    moved = run(evaluate_model(ColourOracle(), data, device="cpu", normalize=ReinhardNormalizer(source, far)))[-1]
    assert plain.settings["stain"] is None and moved.settings["stain"]["target"] == far.to_dict()
    assert moved.metrics["mean_f1"] < plain.metrics["mean_f1"] - 0.1  # the oracle keys on colour

    data_dir = write_set(tmp_path / "data", n=2, size=64)
    model = build_model(ModelConfig.scaled(0.25))
    ckpt = save_checkpoint(tmp_path / "m", model, card_for(model, mpp=0.25, stain_target=far.to_dict()))
    result = run_evaluation(data_dir, ckpt, device="cpu")
    folder = lab_stats([s.image for s in load_pairs(find_pairs(data_dir))[0]])
    assert result.settings["stain"] == {"source": folder.to_dict(), "target": far.to_dict()}
    assert run_evaluation(data_dir, ckpt, device="cpu", stain_normalize=False).settings["stain"] is None


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least one image"):
        list(evaluate_model(ColourOracle(), [], device="cpu"))
    with pytest.raises(ValueError, match="batch_size"):
        list(evaluate_model(ColourOracle(), samples([64]), device="cpu", batch_size=0))


def test_a_missing_checkpoint_is_named(tmp_path):
    data_dir = write_set(tmp_path / "data", n=1, size=32)
    with pytest.raises(CheckpointError, match="nope"):
        run_evaluation(data_dir, tmp_path / "nope.safetensors", device="cpu")


def test_folder_pairs_round_trip(tmp_path):
    data_dir = write_set(tmp_path / "data", n=2, size=48)
    loaded, _ = load_pairs(find_pairs(data_dir))
    result = run(evaluate_model(ColourOracle(), loaded, device="cpu"))[-1]
    assert Path(data_dir).is_dir() and result.metrics["detection_f1"] == 1.0


def test_evaluate_scores_exactly_the_label_maps_predict_writes(tmp_path, monkeypatch):
    """``histoseg evaluate DIR`` and ``histoseg predict DIR/input``: the same label maps, with stain normalisation
    (statistics pooled over the folder) and an opening, at two image sizes."""
    from napari_histoseg.cli import main

    data_dir = write_set(tmp_path / "data", n=2, size=96)
    write_set(tmp_path / "data", n=1, size=72, seed=5, prefix="small")
    torch.manual_seed(3)  # a random model whose maps hold several classes
    model = build_model(ModelConfig.scaled(0.25))
    far = LabStats((55.0, 20.0, -15.0), (12.0, 8.0, 6.0))
    ckpt = save_checkpoint(tmp_path / "m", model, card_for(model, mpp=0.25, stain_target=far.to_dict()))
    options = ["--device", "cpu", "--tile", "64", "--overlap", "0.25", "--opening-radius", "1"]
    assert (
        main(["predict", str(data_dir / "input"), "--out", str(tmp_path / "pred"), "--model", str(ckpt), *options]) == 0
    )
    predicted = {
        p.name.removesuffix("_pred.png"): read_mask(p, tolerance=0)[0] for p in (tmp_path / "pred").glob("*.png")
    }

    from napari_histoseg.jobs.evaluate import evaluation_settings

    scored = {}
    settings = evaluation_settings(device="cpu", tile=64, overlap=0.25, opening_radius=1)
    result = drive(
        evaluate_folder_job(data_dir, ckpt, settings, on_labels=lambda name, labels: scored.update({name: labels}))
    )
    assert sorted(scored) == sorted(predicted) == ["img_000", "img_001", "small_000"]
    for name, labels in scored.items():
        np.testing.assert_array_equal(labels, predicted[name], err_msg=name)
    assert len({int(v) for labels in scored.values() for v in np.unique(labels)}) >= 2  # not a blank map
    assert result.settings["stain"]["target"] == far.to_dict()
    assert result.settings["tile"] == 64 and result.settings["opening_radius"] == 1

    # Per-image statistics (the old predict path) give other maps: the pooling is what both share.
    from napari_histoseg.engine.infer import run as run_job
    from napari_histoseg.engine.jobs import load_model, segment_image

    loaded, card = load_model(ckpt)
    image = iio.imread(data_dir / "input" / "small_000.png")
    alone = run_job(segment_image(image, loaded, card, settings, name="small_000")).labels
    assert not np.array_equal(alone, scored["small_000"])
