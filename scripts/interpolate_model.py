"""Write a checkpoint whose weights lie between a starting model and its fine-tune (WiSE-FT).

    python scripts/interpolate_model.py START.safetensors TUNED.safetensors 0.5 OUT_STEM

The card is the fine-tune's (its resolution, stain target and logit bias), with ``training["interpolated"]``
recording both checkpoints and alpha; its validation metrics are cleared (measure it again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_histoseg.model.checkpoint import load_checkpoint, save_checkpoint
from napari_histoseg.model.interpolate import interpolate_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start", type=Path)
    parser.add_argument("tuned", type=Path)
    parser.add_argument("alpha", type=float, help="0: the starting model, 1: the fine-tune")
    parser.add_argument("out", type=Path, help="output path without suffix")
    args = parser.parse_args()
    start, _ = load_checkpoint(args.start)
    tuned, card = load_checkpoint(args.tuned)
    model = interpolate_weights(start, tuned, args.alpha)
    card.training = {
        **card.training,
        "interpolated": {"start": str(args.start), "tuned": str(args.tuned), "alpha": args.alpha},
    }
    card.metrics = {}
    card.name = f"{card.name}-wise{args.alpha:g}"
    print(save_checkpoint(args.out, model, card))


if __name__ == "__main__":
    main()
