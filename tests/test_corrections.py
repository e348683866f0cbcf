"""Corrected predictions as training pairs: reviewed masks, their codes and loss, honest validation, no collapse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _trainsets import blob_image, write_set
from napari_histoseg.classes import BACKGROUND, BOUNDARY, NON_TUMOR, TUMOR
from napari_histoseg.export_pairs import PairExportError, reviewed_from_edits, save_pair
from napari_histoseg.model.checkpoint import read_card
from napari_histoseg.training.config import TrainConfig
from napari_histoseg.training.corrections import (
    FINETUNE_DEFAULTS,
    KEEP,
    correction_loss,
    distillation_loss,
    encode_targets,
    held_regions,
    prepare_samples,
    resample_sample,
)
from napari_histoseg.training.loss import weighted_cross_entropy
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.point_targets import CELL_ANY, IGNORE
from napari_histoseg.training.samples import Sample, load_pairs
from napari_histoseg.training.train import run_training, split_data

torch.set_num_threads(1)


def test_reviewed_from_edits_takes_whole_cells():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:7, 2:7] = TUMOR
    labels[12:17, 12:17] = NON_TUMOR
    edited = np.zeros_like(labels, bool)
    edited[4, 4] = True  # one pixel of the first cell
    edited[10, 2] = True  # an erased pixel (background now)
    reviewed = reviewed_from_edits(labels, edited, grow=0)
    assert reviewed[2:7, 2:7].all() and reviewed[10, 2]
    assert not reviewed[12:17, 12:17].any()
    assert reviewed_from_edits(labels, edited, grow=1)[1, 4]


def test_pair_with_reviewed_mask_and_resolution_round_trips(tmp_path):
    image, labels, _ = blob_image(32, seed=1)
    reviewed = labels > 0
    save_pair(image, labels, tmp_path, "a", reviewed=reviewed, mpp=0.5)
    save_pair(image, labels, tmp_path, "b")
    pairs = find_pairs(tmp_path)
    assert [p.reviewed is not None for p in pairs] == [True, False]
    samples, _ = load_pairs(pairs)
    assert np.array_equal(samples[0].reviewed, reviewed) and samples[0].mpp == 0.5
    assert samples[1].reviewed is None and samples[1].mpp is None
    with pytest.raises(PairExportError, match="nothing was corrected"):
        save_pair(image, labels, tmp_path, "c", reviewed=np.zeros_like(reviewed))
    # A pair at 0.5 um/px is put on a 0.25 um/px model's grid, its masks with it.
    up = resample_sample(samples[0], 0.25)
    assert up.image.shape == (64, 64, 3) and up.mpp == 0.25
    assert np.array_equal(up.labels[::2, ::2], labels) and np.array_equal(up.reviewed[::2, ::2], reviewed)


def test_upsampled_pair_teaches_interiors_and_holds_edges():
    # A 20x pair on a 40x model's grid: its reviewed cells teach inside, and along their edges (where the coarse
    # labels say nothing exact about the model's thin boundary ring) they are held like unreviewed pixels.
    labels = np.zeros((24, 24), np.uint8)
    labels[4:14, 4:14] = TUMOR
    reviewed = np.zeros((24, 24), bool)
    reviewed[2:16, 2:16] = True
    sample = Sample("a", np.full((24, 24, 3), 200, np.uint8), labels, None, reviewed, 0.5)
    train, _, review = prepare_samples([sample], [], 0.25, None, seed=0)
    codes = train[0].labels
    assert codes.shape == (48, 48) and len(review) == 1
    assert codes[18, 18] == TUMOR  # the middle of the cell: taught its corrected type
    assert codes[4, 4] == BACKGROUND  # reviewed background away from the cell: taught
    assert codes[7, 18] == KEEP + BACKGROUND and codes[8, 18] == KEEP + CELL_ANY  # the cell's edge: held
    assert codes[40, 40] == KEEP + BACKGROUND  # unreviewed: held


def test_codes_and_loss():
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    reviewed = np.array([[True, True], [False, False]])
    held = np.array([[False, True], [False, False]])
    codes = encode_targets(labels, reviewed, held)
    assert codes.tolist() == [[0, IGNORE], [KEEP + CELL_ANY, KEEP + 3]]  # an unreviewed cell keeps being a cell
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 2, 2)
    weights = torch.ones(4)
    t = torch.from_numpy(codes.astype(np.int64))[None]
    only_reviewed = weighted_cross_entropy(logits, torch.tensor([[[0, IGNORE], [IGNORE, IGNORE]]]), weights)
    assert torch.isclose(correction_loss(logits, t, weights, None), only_reviewed)  # no teacher: plain CE


def test_reviewed_pixels_teach_only_what_the_user_changed():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # pixel 0: the teacher decided non-tumor, the user made it tumor (same kind: the type alone is taught);
    # pixel 1: the teacher decided tumor, the user erased it (kind changed: background is taught in full);
    # pixel 2: background the user confirmed (held, not taught); pixel 3: unreviewed (held).
    teacher = torch.tensor([[-5.0, 0.0, 3.0, -5.0], [-5.0, 3.0, 0.0, -5.0], [3.0, -5, -5, 0], [3.0, -5, -5, 0]])
    teacher = teacher.T.reshape(1, 4, 1, 4)
    codes = torch.tensor([[[TUMOR, BACKGROUND, BACKGROUND, KEEP + BACKGROUND]]])
    logits = teacher.clone().requires_grad_(True)
    correction_loss(logits, codes, weights, teacher, keep_weight=0.0).backward()
    grad = logits.grad[0, :, 0]
    assert float(grad[BOUNDARY, 0]) == 0 and float(grad[BACKGROUND, 0]) == 0  # a type: only the type split moves
    assert float(grad[TUMOR, 0]) < 0 < float(grad[NON_TUMOR, 0])
    assert float(grad[BACKGROUND, 1]) < 0  # the erased cell: background taught
    assert torch.all(grad[:, 2:] == 0)  # confirmed and unreviewed pixels: nothing but the (zero-weight) holding
    # With weight, what is held is pulled back to the teacher once it moves.
    moved = teacher.clone()
    moved[0, BOUNDARY, 0, 2] += 4.0
    assert correction_loss(moved, codes, weights, teacher, keep_weight=1.0) > correction_loss(
        moved, codes, weights, teacher, keep_weight=0.0
    )


def test_distillation_holds_kinds_and_frees_types():
    torch.manual_seed(1)
    teacher = torch.randn(2, 4, 8, 8)
    everywhere = torch.ones(2, 8, 8, dtype=torch.bool)
    assert float(distillation_loss(teacher.clone(), teacher, everywhere, keep_types=1.0)) < 1e-6
    swapped = teacher[:, [0, 2, 1, 3]]  # the same pixels with tumor and non-tumor exchanged
    assert float(distillation_loss(swapped, teacher, everywhere, keep_types=0.0)) < 1e-6  # types free
    assert float(distillation_loss(swapped, teacher, everywhere, keep_types=1.0)) > 0.05  # types held
    no_boundary = teacher.clone()
    no_boundary[:, 3] -= 5
    assert float(distillation_loss(no_boundary, teacher, everywhere, keep_types=0.0)) > 0.05  # boundary held
    full = torch.nn.functional.kl_div(
        torch.log_softmax(swapped, 1), torch.log_softmax(teacher, 1), log_target=True, reduction="none"
    ).sum(1)
    assert torch.isclose(distillation_loss(swapped, teacher, everywhere, keep_types=1.0), full.mean(), atol=1e-5)
    # Weighted by the starting model's class: a drift on its (rare, heavily weighted) boundary pixels counts more.
    sure = torch.full((1, 4, 1, 2), -10.0)
    sure[0, 0, 0, 0] = sure[0, 3, 0, 1] = 10.0  # pixel 0: background, pixel 1: boundary
    drifted = sure.clone()
    drifted[0, 1, 0, 1] = 10.0  # the boundary pixel drifts halfway to a cell
    pair = torch.ones(1, 1, 2, dtype=torch.bool)
    plain = float(distillation_loss(drifted, sure, pair))
    weighted = float(distillation_loss(drifted, sure, pair, class_weights=torch.tensor([0.1, 1.0, 1.0, 10.0])))
    assert weighted > 1.8 * plain  # mean over both pixels vs almost all the weight on the drifted one
    # With the card's logit bias the KL compares what inference decides on: a boundary pixel that the bias flips
    # to background moved little in the raw softmax, much in the adjusted one.
    bias = torch.tensor([0.0, 0.0, 0.0, -2.3])
    was = torch.tensor([0.0, -9.0, -9.0, 2.5]).view(1, 4, 1, 1)
    now = torch.tensor([0.0, -9.0, -9.0, 2.1]).view(1, 4, 1, 1)
    one = torch.ones(1, 1, 1, dtype=torch.bool)
    assert int((was + bias.view(1, 4, 1, 1)).argmax()) == 3 and int((now + bias.view(1, 4, 1, 1)).argmax()) == 0
    raw, adjusted = distillation_loss(now, was, one), distillation_loss(now, was, one, logit_bias=bias)
    assert float(adjusted) > 2 * float(raw)
    only_first = torch.zeros(2, 8, 8, dtype=torch.bool)
    only_first[0] = True  # the mean runs over the masked pixels only
    assert torch.isclose(distillation_loss(swapped, teacher, only_first, keep_types=1.0), full[0].mean(), atol=1e-5)


def test_a_fifth_of_the_reviewed_cells_is_held_aside():
    reviewed = np.zeros((40, 40), bool)
    for k in range(10):
        reviewed[2 + 4 * k : 4 + 4 * k, 5:8] = True
    regions, held = held_regions(reviewed, seed=0, name="x")
    assert regions.max() == 10 and len(held) == 2
    _, few = held_regions(reviewed[:10], seed=0)
    assert len(few) == 0  # too few cells to hold any aside


def _mistyped(labels: np.ndarray) -> np.ndarray:
    """A 'prediction' that calls every cell non-tumor (the model's mistake the user corrects)."""
    out = labels.copy()
    out[labels == TUMOR] = NON_TUMOR
    return out


@pytest.fixture(scope="module")
def start_model(tmp_path_factory) -> Path:
    """A tiny model trained on synthetic blobs until it draws cells of both types."""
    root = tmp_path_factory.mktemp("start")
    data = write_set(root / "data", n=2, size=64)
    config = TrainConfig(
        train_dir=str(data), val_dir=str(data), out=str(root / "run"), epochs=12, batch_size=2, lr=1e-3, patch=64,
        width=0.25, samples_per_epoch=8, num_workers=0, model_mpp=0.25, freeze_norm=False,
    )  # fmt: skip
    return Path(run_training(config).best_checkpoint)


def test_finetune_on_one_corrected_pair_keeps_the_model(start_model, tmp_path):
    pairs = tmp_path / "pairs"
    image, labels, _ = blob_image(96, seed=7, n=10)
    predicted = _mistyped(labels)
    corrected = labels  # the user recolours the tumor cells and confirms the others: all cells reviewed
    reviewed = reviewed_from_edits(corrected, corrected != predicted) | reviewed_from_edits(corrected, labels > 0)
    save_pair(image, corrected, pairs, "slide_a", reviewed=reviewed, mpp=0.25)
    config = TrainConfig(
        train_dir=str(pairs), out=str(tmp_path / "ft"), init=str(start_model), epochs=3, batch_size=2, patch=64,
        samples_per_epoch=6, num_workers=0, **FINETUNE_DEFAULTS,
    )  # fmt: skip
    train_pairs, val_pairs = split_data(config.validated())
    assert len(train_pairs) == 1 and val_pairs == []  # one corrected pair trains; it is never held out
    result = run_training(config)
    log = json.loads((Path(result.run_dir) / "review.json").read_text())
    before, epochs = log["before"], log["epochs"]
    regions, held = held_regions(reviewed, seed=0, name="slide_a")
    assert len(epochs) == 3 and before["review_cells"] + before["review_held_cells"] == regions.max()
    assert before["review_held_cells"] == len(held) > 0
    assert result.best_checkpoint is not None and result.best_epoch in (0, 1, 2, 3)
    best = before if result.best_epoch == 0 else epochs[result.best_epoch - 1]
    # The model kept is never worse than the starting model by the run's own score, and did not collapse:
    # every class the starting model drew is still drawn, and little of what the user did not touch changed.
    assert result.best_score >= before["review_score"] - 1e-9
    # It decides classes as the starting model did: same logit bias, stain target and resolution.
    start, best_card = read_card(start_model), read_card(result.best_checkpoint)
    assert best_card.logit_bias == pytest.approx(start.logit_bias, abs=1e-5)
    assert best_card.stain_target == start.stain_target and best_card.mpp == start.mpp
    for c in (1, 2, 3):
        if before["class_share"][c] > 0.002:
            assert best["class_share"][c] > 0.25 * before["class_share"][c]
    assert best["untouched_changed"] < 0.2


def test_review_line_for_the_status():
    from napari_histoseg.training.review import format_review

    assert format_review({"detection_f1": 0.7}) == ""
    line = format_review(
        {
            "review_agreement": 0.9,
            "review_held_agreement": float("nan"),
            "untouched_changed": 0.012,
            "review_before": {"review_agreement": 0.2, "review_held_agreement": 0.25},
        }
    )
    assert (
        line
        == "corrected cells agreeing: 90% trained, n/a held aside; untouched pixels changed: 1.2% (before: 20%, 25%)"
    )


def test_an_epoch_that_loses_a_class_or_held_agreement_is_refused():
    from napari_histoseg.training.review import collapse_problems

    before = {"class_share": [0.8, 0.05, 0.1, 0.05], "review_held_agreement": 0.5}
    user = [0.4, 0.6]  # the reviewed cells' pixels: 40% tumor, 60% non-tumor
    fine = {"class_share": [0.8, 0.07, 0.08, 0.05], "review_held_agreement": 0.75, "review_held_cells": 40}
    fine |= {"type_share": [0.47, 0.53], "user_type_share": user}
    assert collapse_problems(fine, before) == []
    lost = fine | {"type_share": [0.0, 1.0]}
    assert any("tumor cell nearly disappeared" in p for p in collapse_problems(lost, before))
    # Fewer non-tumor cells than the starting model drew is what correcting a systematic mistake does: only a
    # share far below the user's own reviewed cells is refused.
    corrected = fine | {"type_share": [0.8, 0.2], "user_type_share": [0.7, 0.3]}
    assert collapse_problems(corrected, before) == []
    no_ring = fine | {"class_share": [0.85, 0.07, 0.08, 0.005]}
    assert any("boundary nearly disappeared" in p for p in collapse_problems(no_ring, before))
    worse = fine | {"review_held_agreement": 0.25}
    assert any("held-aside" in p for p in collapse_problems(worse, before))
    noise = fine | {"review_held_agreement": 0.45}  # 2 of 40 cells fewer: within two standard errors
    assert collapse_problems(noise, before) == []


def test_a_collapsing_fine_tune_hands_back_the_starting_model(start_model, tmp_path, monkeypatch):
    from napari_histoseg.training import train as train_mod

    image, labels, _ = blob_image(64, seed=3)
    save_pair(image, labels, tmp_path / "pairs", "a", reviewed=labels > 0, mpp=0.25)
    calls = []

    def fake_review(model, review, device, logit_bias, *, reference=None, **kw):
        calls.append(reference is None)
        shares = [0.8, 0.05, 0.1, 0.05] if reference is None else [0.9, 0.0, 0.1, 0.0]  # epochs lose two classes
        types = [0.33, 0.67] if reference is None else [0.0, 1.0]
        metrics = {"review_agreement": 1.0, "review_held_agreement": float("nan"), "untouched_changed": 0.0}
        metrics |= {"type_share": types, "user_type_share": [0.33, 0.67]}
        return {**metrics, "class_share": shares, "review_score": 1.0}, [labels]

    monkeypatch.setattr(train_mod, "review_metrics", fake_review)
    config = TrainConfig(
        train_dir=str(tmp_path / "pairs"), out=str(tmp_path / "ft"), init=str(start_model), epochs=2, batch_size=2,
        patch=64, samples_per_epoch=2, num_workers=0, **FINETUNE_DEFAULTS,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="not kept as best: class tumor cell nearly disappeared"):
        result = run_training(config)
    assert calls == [True, False, False] and result.best_epoch == 0 and result.epochs_done == 2
    assert Path(result.best_checkpoint).name == "best.safetensors"


def test_trainable_choices_freeze_the_rest():
    from napari_histoseg.model.resunetpp import ModelConfig, build_model
    from napari_histoseg.training.optim import trainable_parameters

    model = build_model(ModelConfig.scaled(0.125))
    head = trainable_parameters(model, "head")
    head_ids = {id(p) for p in [*model.head.parameters(), *model.classifier.parameters()]}
    assert {id(p) for p in head} == head_ids
    assert not any(p.requires_grad for p in model.encoder.parameters())
    decoder = trainable_parameters(model, "decoder")
    assert len(decoder) > len(head) and all(p.requires_grad for p in model.decoder.parameters())
    assert len(trainable_parameters(model, "all")) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(Exception, match="trainable"):
        TrainConfig(train_dir=".", out="x", trainable="middle").validated()
