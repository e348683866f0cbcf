"""Check the product's GPU path on a lent GPU machine: the bundled model (with its cell typer) segments real tissue
on the GPU (bf16 autocast, as a user gets it) and on the CPU of the same machine (fp32), and the two results are
compared: pixel agreement per class, cells found, tumor cells and cellularity, and the time per region.

The tissue: the CoNSeP val regions that ``scripts/train_scale_regressor.py --pack`` wrote (768 px at 0.25 um/px,
JPEG quality 95), so one carried folder serves both GPU jobs. Imports neither napari, zarr nor dask.

Usage (device tool, repo root, carry [".scale_data"]):
    PYTHONPATH=src python3 scripts/gpu_check.py --packed .scale_data --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.engine.infer import InferenceSettings
from napari_histoseg.engine.jobs import load_model, segment_image


def cells(labels: np.ndarray) -> tuple[int, int]:
    """(tumor, non-tumor) connected components of a label map."""
    return ndi.label(labels == TUMOR)[1], ndi.label(labels == NON_TUMOR)[1]


def segment(image: np.ndarray, model, card, device: str, *, amp: bool = True) -> tuple[np.ndarray, float]:
    """Labels of ``image`` on ``device`` and the seconds it took (after the model is on the device)."""
    settings = InferenceSettings(device=device, skip_background=False, amp=amp)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    *_, result = segment_image(image, model, card, settings, mpp=card.mpp, name="check")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result.labels, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    paths = sorted(args.packed.glob("val_consep_*.jpg"))
    if not paths:
        raise SystemExit(f"{args.packed}: no val_consep_*.jpg (write them with train_scale_regressor.py --pack)")
    model, card = load_model(None)
    report = {"device": args.device, "name": torch.cuda.get_device_name() if args.device != "cpu" else "cpu"}
    segment(np.array(Image.open(paths[0]).convert("RGB")), model, card, args.device)  # warm-up (kernels, typer)
    rows = []
    for path in paths:
        image = np.array(Image.open(path).convert("RGB"))
        fast, t_fast = segment(image, model, card, args.device)
        ref, t_ref = segment(image, model, card, "cpu", amp=False)
        (tf, nf), (tr, nr) = cells(fast), cells(ref)
        rows.append(
            {
                "region": path.stem,
                "agreement": float((fast == ref).mean()),
                "cells": [tf + nf, tr + nr],
                "tumor": [tf, tr],
                "cellularity": [tf / max(1, tf + nf), tr / max(1, tr + nr)],
                "seconds": [t_fast, t_ref],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report["regions"] = rows
    report["agreement_min"] = min(r["agreement"] for r in rows)
    report["speedup"] = sum(r["seconds"][1] for r in rows) / sum(r["seconds"][0] for r in rows)
    print(json.dumps({k: v for k, v in report.items() if k != "regions"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
