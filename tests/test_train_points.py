"""Training with point-labelled images beside colour-mask pairs, and fine-tuning that keeps the starting model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _trainsets import write_point_set, write_set
from napari_histoseg.analysis.stain_stats import LabStats
from napari_histoseg.model.checkpoint import card_for, load_checkpoint, read_card, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model
from napari_histoseg.training.point_training import patch_share_weights
from napari_histoseg.training.run_folder import read_metrics_csv
from napari_histoseg.training.samples import Sample
from napari_histoseg.training.train import TrainConfig, TrainConfigError, TrainResult, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("pairs"), n=2, size=64)


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> Path:
    return write_point_set(tmp_path_factory.mktemp("points"), n=2, size=64, metadata={"mpp": 0.5, "tumor_classes": [2]})


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(0.25))
    stain = LabStats((60.0, 20.0, -10.0), (10.0, 5.0, 5.0))
    card = card_for(model, mpp=0.25, stain_target=stain.to_dict(), logit_bias=[0.0, -1.0, -1.0, -1.0])
    return save_checkpoint(tmp_path_factory.mktemp("start") / "start", model, card)


def config(data: Path, out: Path, **kw) -> TrainConfig:
    options = dict(
        train_dir=str(data), val_dir=str(data), out=str(out), epochs=1, batch_size=2, lr=1e-4, patch=64,
        samples_per_epoch=4, num_workers=0, warmup=2,
    )  # fmt: skip
    options.update(kw)
    return TrainConfig(**options)


def test_trains_on_masks_and_points_and_scores_the_point_set(data, points, start, tmp_path):
    events = list(
        train(config(data, tmp_path / "run", init=str(start), points_dirs=[str(points)], points_val=str(points)))
    )
    result = events[-1]
    assert isinstance(result, TrainResult) and result.epochs_done == 1
    row = read_metrics_csv(tmp_path / "run")[0]
    assert row["points_type_f1_tumor"] != "" and 0 <= float(row["points_detection_f1"]) <= 1
    card = read_card(result.best_checkpoint)
    assert card.training["point_sets"]["train_images"] == 2
    assert card.training["point_sets"]["tumor_classes"] == [2]
    # A fine-tune keeps the starting model's resolution and stain target (not the new data's colours).
    start_card = read_card(start)
    assert card.mpp == 0.25 and card.stain_target == start_card.stain_target
    # Teacher targets were cached for a resumed run.
    assert len(list((tmp_path / "run" / "point_targets").glob("*.npz"))) == 2


def test_fine_tuning_freezes_batchnorm_statistics(data, start, tmp_path):
    result = list(train(config(data, tmp_path / "run", init=str(start), max_steps=2)))[-1]
    before, _ = load_checkpoint(start)
    after, _ = load_checkpoint(result.last_checkpoint)
    b, a = dict(before.named_buffers()), dict(after.named_buffers())
    means = [k for k in b if k.endswith("running_mean")]
    assert means and all(torch.equal(b[k], a[k]) for k in means)
    weights_moved = any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters(), strict=True))
    assert weights_moved
    # Told not to freeze, the statistics move.
    result = list(train(config(data, tmp_path / "run2", init=str(start), max_steps=2, freeze_norm=False)))[-1]
    moved, _ = load_checkpoint(result.last_checkpoint)
    assert any(not torch.equal(b[k], dict(moved.named_buffers())[k]) for k in means)


def test_point_options_are_validated(data, points, tmp_path):
    with pytest.raises(TrainConfigError, match="point-labelled folder not found"):
        config(data, tmp_path / "r", points_dirs=["/nonexistent"]).validated()
    with pytest.raises(TrainConfigError, match="points_share"):
        config(data, tmp_path / "r", points_dirs=[str(points)], points_share=1.0).validated()
    with pytest.raises(TrainConfigError, match="tumor_classes"):
        config(data, tmp_path / "r", points_dirs=[str(points)], tumor_classes=[]).validated()


def test_patch_share_weights_split_the_draws():
    def s(h: int) -> Sample:
        return Sample("x", np.zeros((h, h, 3), np.uint8), np.zeros((h, h), np.uint8), None)

    weights = patch_share_weights([s(10), s(20)], [s(10)], 0.25)
    assert sum(weights) == pytest.approx(1) and weights[2] == pytest.approx(0.25)
    assert weights[1] == pytest.approx(4 * weights[0])


def test_a_run_started_before_an_option_existed_resumes_with_its_default():
    from napari_histoseg.training.run_folder import config_differences

    saved = {"lr": 1e-4}
    assert config_differences(saved, {"lr": 1e-4, "new_option": 0.5}, {"new_option": 0.5}) == []
    assert config_differences(saved, {"lr": 1e-4, "new_option": 0.7}, {"new_option": 0.5}) == ["new_option: 0.5 -> 0.7"]
