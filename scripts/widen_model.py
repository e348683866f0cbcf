"""Widen a trained checkpoint to twice its widths without changing what it predicts (Net2WiderNet).

    python scripts/widen_model.py runs/stage3/best.safetensors runs/stage4-init [--noise 0.02]

The wide checkpoint keeps the card's resolution, logit bias and stain target, and is meant as ``--init`` of a
fine-tuning run (``histoseg train --init OUT.safetensors``), which then trains the wide network from the narrow
one's accuracy instead of from scratch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_histoseg.model.checkpoint import card_for, load_checkpoint, save_checkpoint
from napari_histoseg.model.widen import widen_twice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path, help="output stem or .safetensors path")
    parser.add_argument("--noise", type=float, default=0.02, help="weight noise, times each tensor's std")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, card = load_checkpoint(args.checkpoint)
    wide = widen_twice(model, noise=args.noise, seed=args.seed)
    wide_card = card_for(
        wide,
        mpp=card.mpp,
        classes=card.classes,
        logit_bias=card.logit_bias,
        stain_target=card.stain_target,
        training={"widened_from": str(args.checkpoint), "noise": args.noise, "seed": args.seed, "from": card.training},
    )
    path = save_checkpoint(args.out, wide, wide_card)
    print(f"widened {model.config.widths} -> {wide.config.widths}: {path}")


if __name__ == "__main__":
    main()
