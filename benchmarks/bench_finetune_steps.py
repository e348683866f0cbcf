"""How far the first fine-tuning steps move the bundled model, per optimiser, learning rate and warm-up.

The bundled model is fine-tuned on one batch (``--batch`` patches of ``--patch`` px from CoNSeP val, its own labels)
for ``--steps`` steps with frozen BatchNorm statistics, as ``train.py`` fine-tunes; after every step the script
records the loss on that batch, the largest relative change of a weight tensor since the start (``|w - w0| /
|w0|``, max over tensors) and the share of pixels whose predicted class changed. A step that moves the model a lot
on the very data it learns from is one that can wreck it on everything else.

    python benchmarks/bench_finetune_steps.py                         # prints JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from napari_histoseg.engine.jobs import load_model
from napari_histoseg.training.config import TrainConfig
from napari_histoseg.training.loss import weighted_cross_entropy
from napari_histoseg.training.optim import freeze_batchnorm, lr_factor, make_optimizer
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.samples import load_pairs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETTINGS = (
    ("rmsprop", 1e-4, 0),  # the widget's old defaults
    ("rmsprop", 1e-4, 20),
    ("adam", 1e-4, 20),
    ("adam", 2e-5, 20),  # corrections.FINETUNE_DEFAULTS
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "consep" / "val")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--settings", nargs="*", default=None, help="optimizer:lr:warmup (default: the four above)")
    args = parser.parse_args(argv)
    settings = SETTINGS
    if args.settings:
        settings = tuple((o, float(lr), int(w)) for o, lr, w in (spec.split(":") for spec in args.settings))
    torch.manual_seed(0)
    base, card = load_model(None)
    base = base.float()
    samples, _ = load_pairs(find_pairs(args.data)[: args.batch])
    p = args.patch
    images = torch.stack(
        [torch.from_numpy(s.image[:p, :p].transpose(2, 0, 1).astype(np.float32) / 255) for s in samples]
    )
    labels = torch.stack([torch.from_numpy(s.labels[:p, :p].astype(np.int64)) for s in samples])
    weights = torch.as_tensor(np.exp(-np.asarray(card.logit_bias)), dtype=torch.float32)
    with torch.no_grad():
        pred0 = base.eval()(images).argmax(1)
    out = {}
    for optimizer_name, lr, warmup in settings:
        model = copy.deepcopy(base)
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        config = TrainConfig(train_dir=".", out=".", optimizer=optimizer_name, lr=lr, warmup=warmup, scheduler="none")
        optimizer = make_optimizer(config, model.parameters())
        rows = []
        for step in range(args.steps):
            model.train()
            freeze_batchnorm(model)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(config, step, args.steps)
            loss = weighted_cross_entropy(model(images), labels, weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.eval()
                logits = model(images)
                moved = max(
                    float((w - start[k]).norm() / start[k].norm().clamp_min(1e-12)) for k, w in model.named_parameters()
                )
                rows.append(
                    {
                        "step": step + 1,
                        "loss_after": round(float(weighted_cross_entropy(logits, labels, weights)), 4),
                        "max_relative_weight_change": round(moved, 4),
                        "pixels_changed": round(float((logits.argmax(1) != pred0).float().mean()), 4),
                    }
                )
        out[f"{optimizer_name} lr {lr:g} warmup {warmup}"] = rows
        print(optimizer_name, lr, warmup, rows, file=sys.stderr, flush=True)
    with torch.no_grad():
        loss0 = float(weighted_cross_entropy(base.eval()(images), labels, weights))
    result = {"loss_before": round(loss0 if math.isfinite(loss0) else -1, 4), "steps": out}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
