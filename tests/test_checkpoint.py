"""Checkpoints: safetensors + JSON card round trip, every way a checkpoint can be bad, fine-tune loading."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from napari_histoseg.model.checkpoint import (
    ARCHITECTURE,
    CheckpointError,
    ModelCard,
    card_for,
    card_path,
    finetune_config,
    load_checkpoint,
    load_matching_weights,
    read_card,
    save_checkpoint,
)
from napari_histoseg.model.resunetpp import ModelConfig, build_model

TINY = ModelConfig.scaled(0.25)


def _trained_like(config: ModelConfig = TINY, seed: int = 0) -> torch.nn.Module:
    """A model whose BN statistics differ from a fresh one, so a failed load would show."""
    torch.manual_seed(seed)
    model = build_model(config).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = _trained_like()
    card = card_for(model, mpp=0.25, name="tiny", training={"data": "synthetic"}, metrics={"dice": 0.5})
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, card)
    return path, model


def _copy(saved_path: Path, tmp_path: Path) -> Path:
    target = tmp_path / saved_path.name
    shutil.copy(saved_path, target)
    shutil.copy(card_path(saved_path), card_path(target))
    return target


def _outputs(model, x):
    with torch.inference_mode():
        return model(x)


def test_round_trip_gives_same_outputs(saved):
    path, model = saved
    assert path.suffix == ".safetensors" and card_path(path).is_file()
    loaded, card = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model, x), rtol=0, atol=0)
    assert not loaded.training
    assert card.architecture == ARCHITECTURE and card.mpp == 0.25 and card.name == "tiny"
    assert card.model_config == TINY
    assert card.class_names == ["background", "tumor cell", "non-tumor cell", "cell boundary"]
    assert card.classes[1]["color"] == [255, 0, 0]
    assert card.normalization["input_range"] == "0-1 RGB"
    assert set(card.versions) == {"napari_histoseg", "torch", "python"}
    assert len(card.sha256) == 64 and card.created


def test_card_is_plain_json_and_readable_from_either_path(saved):
    path, _ = saved
    raw = json.loads(card_path(path).read_text())
    assert raw["config"]["widths"] == [4, 8, 16, 32]
    assert raw["metrics"] == {"dice": 0.5}
    assert read_card(path) == read_card(card_path(path)) == ModelCard.from_dict(raw)


def test_half_precision_save_loads_into_float32(tmp_path, saved):
    _, model = saved
    full = save_checkpoint(tmp_path / "full", model, card_for(model, mpp=None))
    half = save_checkpoint(tmp_path / "half", model, card_for(model, mpp=None), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, card = load_checkpoint(half)
    assert card.mpp is None
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model, x), rtol=0.05, atol=0.05)


def test_save_overwrites_atomically_without_leftovers(tmp_path, saved):
    _, model = saved
    path = save_checkpoint(tmp_path / "m", model, card_for(model, mpp=0.5))
    other = _trained_like(seed=1)
    save_checkpoint(path, other, card_for(other, mpp=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(_outputs(load_checkpoint(path)[0], x), _outputs(other, x))


def test_save_refuses_a_card_of_another_model(tmp_path, saved):
    _, model = saved
    with pytest.raises(ValueError, match="card config"):
        save_checkpoint(tmp_path / "m", model, card_for(build_model(), mpp=0.5))


def test_missing_card(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    card_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"tiny\.json: model card not found"):
        load_checkpoint(path)


def test_missing_weights(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_checkpoint(path)


def test_corrupt_bytes_fail_the_sha_check(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path.name}: sha256 mismatch"):
        load_checkpoint(path)


def test_corrupt_header_is_reported_without_verification(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_checkpoint(path, verify=False)


def test_truncated_file(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    path.write_bytes(path.read_bytes()[:-1000])
    for verify in (True, False):
        with pytest.raises(CheckpointError, match="truncated: tensors need"):
            load_checkpoint(path, verify=verify)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="only 2 bytes"):
        load_checkpoint(path, verify=False)


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_file_is_refused_without_unpickling(tmp_path, saved, zip_format):
    path = _copy(saved[0], tmp_path)
    sentinel = tmp_path / "unpickled"

    class Boom:  # unpickling this would create the sentinel file
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    pt = tmp_path / "model.pt"
    if zip_format:
        torch.save({"weights": saved[1].state_dict(), "boom": Boom()}, pt)
    else:
        pt.write_bytes(pickle.dumps(Boom(), protocol=4))
    shutil.copy(pt, path)  # a pickle renamed to .safetensors, next to a valid card
    for candidate in (path, pt):
        with pytest.raises(CheckpointError, match="pickled PyTorch file"):
            load_checkpoint(candidate, verify=False)
    with pytest.raises(CheckpointError, match="pickled"):
        load_matching_weights(build_model(TINY), path)
    assert not sentinel.exists()


def test_sha_mismatch_from_a_card_of_another_file(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    card = json.loads(card_path(path).read_text())
    card["sha256"] = "0" * 64
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)
    load_checkpoint(path, verify=False)  # same weights, so loading unverified works


def test_card_of_another_architecture(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    card = json.loads(card_path(path).read_text())
    card["architecture"] = "hovernet"
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="architecture 'hovernet' is not supported"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="hovernet"):
        load_matching_weights(build_model(TINY), path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("mpp"), "lacks required keys \\['mpp'\\]"),
        (lambda c: c.update(extra=1), "unknown keys \\['extra'\\]"),
        (lambda c: c.update(mpp=-1), "mpp"),
        (lambda c: c["config"].update(depth=3), "invalid model config in card: unknown model config keys"),
        (lambda c: c["classes"].pop(), "card lists 3 classes"),
    ],
)
def test_invalid_card_contents(tmp_path, saved, edit, match):
    path = _copy(saved[0], tmp_path)
    card = json.loads(card_path(path).read_text())
    edit(card)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_card_not_json(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    card_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(path)


def test_weights_of_a_different_config(tmp_path, saved):
    """A card describing one width beside weights of another: shapes named in the error."""
    path = _copy(saved[0], tmp_path)
    wide = _trained_like(ModelConfig.scaled(0.5))
    other = save_checkpoint(tmp_path / "wide", wide, card_for(wide, mpp=0.25))
    shutil.copy(other, path)  # weights of widths 8..64 under a card for widths 4..32
    with pytest.raises(CheckpointError, match="another config"):
        load_checkpoint(path, verify=False)
    # Without the metadata hint (e.g. a foreign safetensors file) the shapes are still checked key by key.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"do not match the config in the card: stem\.conv\.0\.weight"):
        load_checkpoint(path, verify=False)
    save_file({"stem.conv.0.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, verify=False)


def test_finetune_from_fewer_classes_loads_all_but_the_classifier(tmp_path):
    three = _trained_like(ModelConfig.scaled(0.25, num_classes=3))
    card = card_for(three, mpp=0.5, classes=[{"index": i, "name": f"c{i}", "color": [i, i, i]} for i in range(3)])
    path = save_checkpoint(tmp_path / "three", three, card)
    assert finetune_config(path, num_classes=4) == ModelConfig.scaled(0.25)
    assert finetune_config(path) == ModelConfig.scaled(0.25, num_classes=3)
    torch.manual_seed(1)
    four = build_model(finetune_config(path, num_classes=4))
    fresh_classifier = four.classifier.weight.detach().clone()
    report = load_matching_weights(four, path)
    assert sorted(report["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert len(report["loaded"]) == len(four.state_dict()) - 2
    torch.testing.assert_close(four.stem.conv[0].weight, three.stem.conv[0].weight)
    torch.testing.assert_close(four.head.branches[0][1].running_var, three.head.branches[0][1].running_var)
    torch.testing.assert_close(four.classifier.weight, fresh_classifier)


def test_finetune_loads_half_precision_checkpoint(tmp_path, saved):
    _, model = saved
    path = save_checkpoint(tmp_path / "half", model, card_for(model, mpp=0.25), half=True)
    target = build_model(TINY)
    report = load_matching_weights(target, path)
    assert report["skipped"] == []
    assert target.stem.conv[0].weight.dtype == torch.float32
    torch.testing.assert_close(target.stem.conv[0].weight, model.stem.conv[0].weight, rtol=1e-3, atol=1e-3)


def test_finetune_into_another_width_is_refused(saved):
    path, _ = saved
    before = {k: v.clone() for k, v in build_model(ModelConfig()).state_dict().items()}
    target = build_model(ModelConfig())
    target.load_state_dict(before)
    with pytest.raises(CheckpointError, match=r"0% of the model's weights match.*widths \[4, 8, 16, 32\]"):
        load_matching_weights(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # left untouched


def test_finetune_checks_the_sha(tmp_path, saved):
    path = _copy(saved[0], tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_matching_weights(build_model(TINY), path)


def test_logit_bias_round_trips_and_is_checked(tmp_path):
    model = _trained_like()
    card = card_for(model, mpp=0.25, logit_bias=[0.0, -2.5, -3.0, -2.5])
    path = save_checkpoint(tmp_path / "biased", model, card)
    assert read_card(path).logit_bias == [0.0, -2.5, -3.0, -2.5]
    with pytest.raises(ValueError, match="logit biases"):
        card_for(model, mpp=0.25, logit_bias=[0.0, 1.0])
    d = card.to_dict()
    for bad in ([0.0, 1.0], [0.0, float("nan"), 0.0, 0.0], "0,0,0,0"):
        with pytest.raises(ValueError, match="logit_bias"):
            ModelCard.from_dict({**d, "logit_bias": bad})
    del d["logit_bias"]  # a card written before the field existed
    assert ModelCard.from_dict(d).logit_bias == []
