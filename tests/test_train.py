"""Training loop: overfitting a tiny model, best vs last, resume, cancel, fine-tuning, bad configs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _trainsets import write_set
from napari_histoseg.analysis.stain_stats import lab_stats
from napari_histoseg.model.checkpoint import CheckpointError, card_for, load_checkpoint, read_card, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model
from napari_histoseg.training import train as train_mod
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.run_folder import hold_interrupts
from napari_histoseg.training.samples import load_pairs
from napari_histoseg.training.train import (
    EpochEvent,
    StepEvent,
    TrainConfig,
    TrainConfigError,
    TrainResult,
    TrainStart,
    read_metrics_csv,
    run_training,
    selection_score,
    split_data,
    train,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("data"), n=2, size=64)


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    options = dict(
        train_dir=str(data),
        val_dir=str(data),
        out=str(out),
        epochs=2,
        batch_size=2,
        lr=1e-3,
        patch=64,
        width=0.25,
        samples_per_epoch=4,
        num_workers=0,
        model_mpp=0.25,
    )
    options.update(kw)
    return TrainConfig(**options)


def collect(config: TrainConfig, **kw) -> list:
    return list(train(config, **kw))


def test_overfits_two_images(data, tmp_path):
    events = collect(tiny(data, tmp_path / "run", epochs=12, samples_per_epoch=8))
    start, steps = events[0], [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    result = events[-1]
    assert isinstance(start, TrainStart) and isinstance(result, TrainResult)
    assert len(start.class_weights) == 4 and start.class_weights[1] > start.class_weights[0]  # N / N_c
    assert len(steps) == 12 * 4 and steps[-1].global_step == 48
    assert epochs[-1].train_loss < 0.5 * steps[0].loss
    assert max(e.val["mean_f1"] for e in epochs) > epochs[0].val["mean_f1"] + 0.2

    run = Path(result.run_dir)
    rows = read_metrics_csv(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert json.loads((run / "config.json").read_text())["epochs"] == 12
    assert json.loads((run / "class_weights.json").read_text())["class_weights"] == pytest.approx(start.class_weights)
    best_card = read_card(result.best_checkpoint)
    assert best_card.mpp == 0.25
    assert best_card.training["epoch"] == result.best_epoch
    # The card undoes the weighted loss's prior shift at inference: logit bias -log(w_c).
    assert best_card.logit_bias == pytest.approx([-math.log(w) for w in start.class_weights])
    # ... and records the training images' colours, which inference maps slides onto.
    train_images = [s.image for s in load_pairs(find_pairs(data))[0]]
    assert best_card.stain_stats == lab_stats(train_images)
    assert best_card.metrics["mean_f1"] == pytest.approx(result.best_metrics["mean_f1"])
    assert int(rows[result.best_epoch - 1]["is_best"]) == 1
    model, _ = load_checkpoint(result.best_checkpoint)
    assert model.config.widths == (4, 8, 16, 32)
    assert not list(run.glob(".*.tmp"))


def fake_validation(scores: list[float]):
    calls = iter(scores)

    def validate(*args, **kwargs):
        s = next(calls)
        return {"mean_f1": s, "detection_f1": s, "type_f1_tumor": s, "dice": [1.0, s, s, s]}

    return validate


def test_best_is_kept_when_a_later_epoch_is_worse(data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "validate_model", fake_validation([0.2, 0.6, 0.4]))
    result = run_training(tiny(data, tmp_path / "run", epochs=3, samples_per_epoch=2))
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.6)
    assert read_card(result.best_checkpoint).training["epoch"] == 2
    assert read_card(result.last_checkpoint).training["epoch"] == 3
    assert [r["is_best"] for r in read_metrics_csv(result.run_dir)] == ["1", "1", "0"]
    best, last = load_file(result.best_checkpoint), load_file(result.last_checkpoint)
    assert not torch.equal(best["classifier.weight"], last["classifier.weight"])


def test_border_weighted_training_records_its_settings(data, tmp_path):
    events = collect(tiny(data, tmp_path / "run", border_weight=10.0, border_sigma=3.0))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps and all(math.isfinite(e.loss) and e.loss > 0 for e in steps)
    settings = read_card(events[-1].best_checkpoint).training["config"]
    assert settings["border_weight"] == 10.0 and settings["border_sigma"] == 3.0


def test_selection_score():
    metrics = {"detection_f1": 0.6, "type_f1_tumor": float("nan"), "mean_f1": 0.8, "val_loss": 0.3}
    assert selection_score(metrics) == pytest.approx(0.7)  # NaN parts are skipped
    assert selection_score(metrics, "val_loss") == pytest.approx(-0.3)
    assert selection_score({}, "mean_f1") != selection_score({}, "mean_f1")  # NaN


@pytest.mark.parametrize("ema", [None, 0.5])
def test_resume_equals_an_uninterrupted_run(data, tmp_path, ema):
    full = run_training(tiny(data, tmp_path / "full", epochs=2, ema=ema))
    first = run_training(tiny(data, tmp_path / "split", epochs=2, max_steps=2, ema=ema))  # stops after epoch 1
    assert first.epochs_done == 1 and first.stopped_early
    events = collect(tiny(data, tmp_path / "split", epochs=2, ema=ema), resume=True)
    assert events[0].start_epoch == 2
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [2]
    resumed = events[-1]
    assert resumed.epochs_done == 2
    a, b = load_file(full.last_checkpoint), load_file(resumed.last_checkpoint)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    sa = load_file(Path(full.run_dir) / "state.safetensors")
    sb = load_file(Path(resumed.run_dir) / "state.safetensors")
    assert set(sa) == set(sb) and any(k.startswith("optim/") for k in sa)
    torch.testing.assert_close(sa["optim/0/square_avg"], sb["optim/0/square_avg"], rtol=1e-5, atol=1e-7)
    assert len(read_metrics_csv(resumed.run_dir)) == 2
    assert any(k.startswith("ema/") for k in sa) == (ema is not None)


def test_checkpoints_hold_the_weight_average(data, tmp_path):
    result = run_training(tiny(data, tmp_path / "run", epochs=1, ema=0.5))
    last = load_file(result.last_checkpoint)
    state = load_file(Path(result.run_dir) / "state.safetensors")
    assert float(state["ema/n_averaged"]) == 2  # one update per step
    name = "classifier.weight"
    torch.testing.assert_close(last[name].float(), state[f"ema/module.{name}"])
    assert not torch.equal(last[name].float(), state[f"model/{name}"])  # the average, not the last step
    # BatchNorm statistics are averaged too: the checkpoint's match the average's.
    bn = next(k for k in last if k.endswith("running_mean"))
    torch.testing.assert_close(last[bn].float(), state[f"ema/module.{bn}"])


def test_cancel_mid_epoch_keeps_checkpoints_and_resumes(data, tmp_path):
    config = tiny(data, tmp_path / "run", epochs=3)
    steps = 0

    def stop() -> bool:
        return steps >= 3  # the first step of epoch 2 has run

    result = None
    for event in train(config, should_stop=stop):
        steps += isinstance(event, StepEvent)
        result = event
    assert result.cancelled and result.epochs_done == 1
    for path in (result.best_checkpoint, result.last_checkpoint):
        load_checkpoint(path)
    assert len(read_metrics_csv(result.run_dir)) == 1
    # Closing the generator mid-epoch (napari's quit) also leaves a valid, resumable run.
    generator = train(config, resume=True)
    for event in generator:
        if isinstance(event, StepEvent):
            break
    generator.close()
    load_checkpoint(Path(result.run_dir) / "last.safetensors")
    assert not list(Path(result.run_dir).glob(".*.tmp"))
    final = run_training(config, resume=True)
    assert final.epochs_done == 3 and len(read_metrics_csv(final.run_dir)) == 3


def test_max_steps_stops_early(data, tmp_path):
    result = run_training(tiny(data, tmp_path / "run", epochs=5, max_steps=3))
    assert result.stopped_early and result.epochs_done == 2
    assert read_card(result.last_checkpoint).training["global_step"] == 3


def _save_tiny(path: Path, **config_overrides) -> Path:
    model = build_model(ModelConfig.scaled(0.25, **config_overrides))
    return save_checkpoint(path, model, card_for(model, mpp=0.5))


def test_init_from_a_three_class_checkpoint(data, tmp_path):
    ckpt = _save_tiny(tmp_path / "three", num_classes=3)
    events = collect(tiny(data, tmp_path / "run", width=None, init=str(ckpt), epochs=1, max_steps=1))
    start = events[0]
    assert start.init_report["skipped"] == ["classifier.weight", "classifier.bias"]
    model, card = load_checkpoint(events[-1].last_checkpoint)
    assert model.config.num_classes == 4 and model.config.widths == (4, 8, 16, 32)
    assert card.training["init"]["checkpoint"] == str(ckpt)


def test_init_with_another_width_is_a_clear_error(data, tmp_path):
    ckpt = _save_tiny(tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="match this checkpoint"):
        collect(tiny(data, tmp_path / "run", width=1.0, init=str(ckpt)))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"train_dir": "/nonexistent/train"}, "training folder not found"),
        ({"val_dir": "/nonexistent/val"}, "validation folder not found"),
        ({"val_fraction": 0.3}, "not both"),
        ({"optimizer": "lion"}, "unknown optimizer"),
        ({"patch": 60}, "multiple of 8"),
        ({"select_metric": "accuracy"}, "select_metric"),
        ({"init": "/nonexistent/model.safetensors"}, "init checkpoint not found"),
        ({"group_regex": "[a"}, "not a valid regular expression"),
        ({"ema": 1.0}, "ema must be a decay"),
        ({"border_weight": -1.0}, "border_weight must be >= 0"),
        ({"border_sigma": 0.0}, "border_sigma must be > 0"),
    ],
)
def test_bad_configs_raise_clear_errors(data, tmp_path, change, match):
    with pytest.raises(TrainConfigError, match=match):
        collect(tiny(data, tmp_path / "run", **change))


def test_run_folder_rules(data, tmp_path):
    with pytest.raises(TrainConfigError, match="nothing to resume"):
        collect(tiny(data, tmp_path / "run"), resume=True)
    run_training(tiny(data, tmp_path / "run", epochs=1, max_steps=1))
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        collect(tiny(data, tmp_path / "run"))
    with pytest.raises(TrainConfigError, match="lr: 0.001 -> 0.01"):
        collect(tiny(data, tmp_path / "run", lr=1e-2), resume=True)


def test_validation_split_holds_out_whole_source_images(tmp_path):
    root = write_set(tmp_path / "a", n=3, size=32, prefix="tileA")
    write_set(root, n=3, size=32, seed=5, prefix="tileB")
    write_set(root, n=2, size=32, seed=9, prefix="tileC")
    config = TrainConfig(train_dir=str(root), out=str(tmp_path / "run"), val_fraction=0.3, group_regex=r"^(.+)_\d+$")
    train_pairs, val_pairs = split_data(config.validated())
    groups = lambda pairs: {p.name.split("_")[0] for p in pairs}  # noqa: E731
    assert groups(train_pairs).isdisjoint(groups(val_pairs)) and len(groups(val_pairs)) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_data(TrainConfig(train_dir=str(root), out="x", group_regex=r"^(tile)").validated())


def test_interrupts_are_held_back_during_checkpoint_writes():
    # Python's own Ctrl-C handler, as in a shell: in the full suite an earlier test (napari, Qt) can leave
    # another one installed, and the held-back interrupt goes to whatever handler was there before the block.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt), hold_interrupts():
            # The handler the block installed, called as Python calls it on a SIGINT (a real signal can be
            # handled late under load).
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            done.append(True)  # reached: the interrupt waits for the block to end
    finally:
        signal.signal(signal.SIGINT, outer)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is outer


def test_training_does_not_import_napari_zarr_or_dask():
    code = (
        "import sys; import napari_histoseg.training.train, napari_histoseg.training.evaluate; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'zarr', 'dask', 'qtpy'}); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
