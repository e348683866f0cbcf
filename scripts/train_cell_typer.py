"""Train the cell typer (engine/cell_typer.py) on BRCA-M2C points and CoNSeP cells.

Crops of 80 px at 0.5 um/px centred on each BRCA-M2C point (tumor = class 2) and on each CoNSeP nucleus (tumor =
its "epithelial" colour), stain-normalised as inference normalises (BRCA-M2C per image, CoNSeP per folder), with
rotations, flips, shifts and colour jitter (``--stain-jitter``: also in haematoxylin / eosin optical density).
Reports typing accuracy and tumor F1 at the annotated cells of BRCA-M2C val, of the sites kept out
(``--exclude-sites``) and of CoNSeP val; keeps the last epoch (no selection on them).

``--specks`` (with ``--labels``) adds non-tumor crops at the cells the segmentation reports where there is no
nucleus: on CoNSeP, found cells with no true nucleus within 3 um (it annotates every nucleus); on BRCA-M2C, whose
points miss many nuclei, only found cells under ``SPECK_MAX_UM2`` with no point within 3 um. ``--context 2`` adds
a view twice as wide (80 um at 1 um/px) of each cell, to measure whether the neighbourhood helps.

    python scripts/train_cell_typer.py --out runs/typer --exclude-sites AC
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.analysis.instances import cell_rules, cells_from_labels
from napari_histoseg.analysis.metrics import instance_centroids, match_centroids
from napari_histoseg.classes import NON_TUMOR, TUMOR
from napari_histoseg.engine.cell_typer import (
    CROP,
    CellTyper,
    labels_channel,
    to_typer_grid,
    typer_crops,
)
from napari_histoseg.engine.jobs import load_model
from napari_histoseg.engine.stain_transform import normalizer_for
from napari_histoseg.training.pair_folders import find_pairs
from napari_histoseg.training.point_training import normalize_stain
from napari_histoseg.training.points import find_point_files, load_point_samples, read_spec, site_of
from napari_histoseg.training.samples import load_pairs, pooled_stain_stats

CONSEP_MPP = 0.25  # CoNSeP's resolution where a sample does not state one
MARGIN = 4  # px of random shift: a detected cell's centroid is not exactly the annotator's point
# A found cell under this area (um^2) with no point near is taken for a speck on BRCA-M2C: larger ones may be real,
# unannotated nuclei (docs/cell-typer.md: the median area of found cells with no point near is 7.8 um^2).
SPECK_MAX_UM2 = 10.0
SPECK_RADIUS_UM = 3.0  # a found cell this far from every true nucleus or point is not one (the evaluation's radius)
# Optical density of haematoxylin, eosin and DAB per RGB channel (skimage's rgb_from_hed).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def _with_labels(image: torch.Tensor, maps: Path | None, root: Path, stem: str) -> torch.Tensor:
    """The image with the segmentation's own call as a 4th channel, read from ``maps`` (cache_label_maps.py);
    unchanged without ``maps``."""
    if maps is None:
        return image
    labels = np.load(maps / f"{root.parent.name}_{root.name}_{stem}.npy")
    return torch.cat([image, labels_channel(labels)])


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def _is_labels(channels: int) -> torch.Tensor:
    """Which of a crop's channels hold the labels channel: the 4th of each view when views have 4 channels
    (RGB + labels: 4 or 8 in all), none when they have 3 (3 or 6)."""
    per_view = 4 if channels % 4 == 0 else 3
    return (torch.arange(channels) % per_view == 3).view(1, -1, 1, 1)


def _uint8(crops: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to 0-255; a labels channel in [-1, 1] to 0-254 (127 = neither)."""
    crops = torch.where(_is_labels(crops.shape[1]), (crops + 1) / 2 * 254 / 255, crops)
    return crops.clamp(0, 1).mul(255).round().to(torch.uint8)


def _float(crops: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_uint8`."""
    x = crops.float() / 255
    return torch.where(_is_labels(x.shape[1]), x * 255 / 254 * 2 - 1, x)


def point_images(root: Path, spec, target, **select) -> Iterator[tuple]:
    """``(sample, image)`` of each image of a BRCA-M2C folder, (3, H, W) float in 0-1, stain-normalised on its own
    (as ``histoseg evaluate`` on points does)."""
    for s in load_point_samples(find_point_files(root), spec, **select):
        yield s, _tensor(normalize_stain(s.image, target))


def consep_images(root: Path, target) -> Iterator[tuple]:
    """``(sample, image)`` of each image of a CoNSeP folder, (3, H, W) float in 0-1, normalised from the folder's
    pooled colours (as ``histoseg evaluate`` on pairs does)."""
    samples, _ = load_pairs(find_pairs(root))
    normalize = normalizer_for(pooled_stain_stats(samples), target)
    for s in samples:
        image = _tensor(s.image)
        yield s, normalize(image).clamp(0, 1) if normalize is not None else image


def _point_grids(root: Path, spec, target, maps: Path | None, **select) -> Iterator[tuple]:
    """``(sample, grid, scale)`` of each image of :func:`point_images`, with its labels channel when ``maps`` are
    given, on the typer's grid."""
    for s, image in point_images(root, spec, target, **select):
        yield s, *to_typer_grid(_with_labels(image, maps, root, s.name), s.mpp)


def _consep_grids(root: Path, target, maps: Path | None) -> Iterator[tuple]:
    """``(sample, grid, scale)`` of each image of :func:`consep_images`, with its labels channel when ``maps`` are
    given, on the typer's grid."""
    for s, image in consep_images(root, target):
        yield s, *to_typer_grid(_with_labels(image, maps, root, s.name), s.mpp or CONSEP_MPP)


def point_crops(
    root: Path, target, maps: Path | None, *, exclude=(), only=None, context: int = 1
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Crops (N, C * views, CROP+2M, CROP+2M) uint8 at the points of a BRCA-M2C folder, tumor flags, site per
    crop."""
    spec = read_spec(root, mpp=0.5, tumor_classes=[2])
    crops, tumor, sites = [], [], []
    for s, grid, scale in _point_grids(root, spec, target, maps, exclude_sites=exclude, only_sites=only):
        crops.append(_uint8(_crops_with_margin(grid, (s.points + 0.5) * scale - 0.5, context)))
        tumor.append(s.is_tumor(spec))
        sites += [site_of(s.name)] * len(s.points)
    return torch.cat(crops), np.concatenate(tumor), sites


def consep_crops(root: Path, target, maps: Path | None, context: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """Crops at the nuclei of a CoNSeP folder (instance maps), tumor flags by the class majority of each nucleus."""
    crops, tumor = [], []
    for s, grid, scale in _consep_grids(root, target, maps):
        n = int(s.inst.max())
        if n == 0:
            continue
        flat = s.inst.ravel()
        t = np.bincount(flat, weights=(s.labels == TUMOR).ravel(), minlength=n + 1)[1:]
        nt = np.bincount(flat, weights=(s.labels == NON_TUMOR).ravel(), minlength=n + 1)[1:]
        typed = (t + nt) > 0  # ids the map skips have no pixels, so no class either
        centres = (instance_centroids(s.inst, n)[typed] + 0.5) * scale - 0.5
        crops.append(_uint8(_crops_with_margin(grid, centres, context)))
        tumor.append((t >= nt)[typed])
    return torch.cat(crops), np.concatenate(tumor)


def _found_cells(labels: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (N, 2) and areas (um^2) of the cells the segmentation found in a label map."""
    instances, classes = cells_from_labels(labels, **cell_rules(mpp))
    n = len(classes) - 1
    area = np.bincount(instances.ravel(), minlength=n + 1)[1:] * mpp * mpp
    return instance_centroids(instances, n), area


def speck_crops(
    brca_train: Path, consep_train: Path, target, maps: Path, *, exclude=(), context: int = 1
) -> torch.Tensor:
    """Crops (N, 4 * views, ...) uint8 at found cells that are no nucleus (see the module docstring), all
    non-tumor."""
    crops = []
    spec = read_spec(brca_train, mpp=0.5, tumor_classes=[2])
    for s, grid, scale in _point_grids(brca_train, spec, target, maps, exclude_sites=exclude):
        centres, area = _found_cells(np.load(maps / f"brca-m2c_{brca_train.name}_{s.name}.npy"), s.mpp)
        _, lone, _ = match_centroids(centres, s.points, SPECK_RADIUS_UM / s.mpp)
        lone = lone[area[lone] < SPECK_MAX_UM2]
        crops.append(_uint8(_crops_with_margin(grid, (centres[lone] + 0.5) * scale - 0.5, context)))
    for s, grid, scale in _consep_grids(consep_train, target, maps):
        mpp = s.mpp or CONSEP_MPP
        centres, _ = _found_cells(np.load(maps / f"consep_{consep_train.name}_{s.name}.npy"), mpp)
        _, lone, _ = match_centroids(centres, instance_centroids(s.inst), SPECK_RADIUS_UM / mpp)
        crops.append(_uint8(_crops_with_margin(grid, (centres[lone] + 0.5) * scale - 0.5, context)))
    return torch.cat(crops)


def _crops_with_margin(grid: torch.Tensor, centres: np.ndarray, context: int) -> torch.Tensor:
    """Crops MARGIN px larger on each side than the typer reads, for random shifts in training."""
    return typer_crops(grid, centres, context, CROP + 2 * MARGIN)


def stain_jitter(rgb: torch.Tensor, sigma: float) -> torch.Tensor:
    """Scale each crop's haematoxylin, eosin and DAB optical densities by 1 +- ``sigma`` and shift them by +-
    ``sigma`` / 4 (uniform; Tellez et al. 2019's H&E augmentation), RGB in [0, 1] in and out."""
    n = len(rgb)
    od = -torch.log(rgb.clamp(1 / 255, 1))
    hed = torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB)
    alpha = 1 + sigma * (torch.rand(n, 3, 1, 1) * 2 - 1)
    beta = sigma / 4 * (torch.rand(n, 3, 1, 1) * 2 - 1)
    od = torch.einsum("ndhw,dc->nchw", (hed * alpha + beta), RGB_FROM_HED)
    return torch.exp(-od.clamp(min=0))


def augment(x: torch.Tensor, rng: np.random.Generator, stain_sigma: float = 0.0, views: int = 1) -> torch.Tensor:
    """Random shift (crop inside the margin), rotation, flip, H&E optical density jitter (``stain_sigma``),
    brightness / contrast / saturation jitter; the same for each of a crop's ``views``."""
    n = len(x)
    dy, dx = rng.integers(0, 2 * MARGIN + 1, size=2)
    x = _float(x[:, :, dy : dy + CROP, dx : dx + CROP])
    x = torch.rot90(x, int(rng.integers(4)), (2, 3))
    if rng.random() < 0.5:
        x = x.flip(3)
    # The views side by side, so that one colour draw covers a cell's views.
    _, c, h, w = x.shape
    x = x.reshape(n, views, c // views, h, w).permute(0, 2, 3, 1, 4).reshape(n, c // views, h, views * w)
    rgb, own = x[:, :3], x[:, 3:]
    if stain_sigma > 0:
        rgb = stain_jitter(rgb, stain_sigma)
    gray = rgb.mean(1, keepdim=True)
    sat = 1 + 0.3 * (torch.rand(n, 1, 1, 1) * 2 - 1)
    rgb = gray + (rgb - gray) * sat
    scale = 1 + 0.15 * (torch.rand(n, 3, 1, 1) * 2 - 1)
    shift = 0.06 * (torch.rand(n, 3, 1, 1) * 2 - 1)
    x = torch.cat([(rgb * scale + shift).clamp(0, 1), own], dim=1)
    return x.reshape(n, c // views, h, views, w).permute(0, 3, 1, 2, 4).reshape(n, c, h, w)


def centre(x: torch.Tensor) -> torch.Tensor:
    return _float(x[:, :, MARGIN : MARGIN + CROP, MARGIN : MARGIN + CROP])


@torch.inference_mode()
def typing_scores(model: CellTyper, crops: torch.Tensor, tumor: np.ndarray) -> dict:
    from napari_histoseg.engine.cell_typer import tumor_probability

    model.eval()
    pred = tumor_probability(model, centre(crops)) >= 0.5
    model.train()
    tp = int((pred & tumor).sum())
    fp = int((pred & ~tumor).sum())
    fn = int((~pred & tumor).sum())
    return {
        "cells": len(tumor),
        "accuracy": float((pred == tumor).mean()),
        "tumor_f1": 2 * tp / max(1, 2 * tp + fp + fn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--exclude-sites", nargs="*", default=["AC"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--no-consep", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--labels", type=Path, help="label maps of cache_label_maps.py: train a 4-channel typer that also reads them"
    )
    parser.add_argument("--specks", action="store_true", help="with --labels: non-tumor crops at found non-nuclei")
    parser.add_argument("--stain-jitter", type=float, default=0.0, help="H&E optical density jitter, e.g. 0.1")
    parser.add_argument(
        "--context", type=int, default=1, help="also read a view this many times wider (2: 80 um), downsampled"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    _, card = load_model(None)
    target = card.stain_stats
    brca, consep = args.data / "brca-m2c", args.data / "consep"
    t0 = time.perf_counter()
    maps, context = args.labels, args.context
    x_tr, y_tr, _ = point_crops(brca / "train", target, maps, exclude=args.exclude_sites, context=context)
    checks = {"brca_val": point_crops(brca / "val", target, maps, context=context)[:2]}
    if args.exclude_sites:
        checks["brca_held_out_" + "_".join(args.exclude_sites)] = point_crops(
            brca / "train", target, maps, only=args.exclude_sites, context=context
        )[:2]
    checks["consep_val"] = consep_crops(consep / "val", target, maps, context)
    if not args.no_consep:
        xc, yc = consep_crops(consep / "train", target, maps, context)
        x_tr, y_tr = torch.cat([x_tr, xc]), np.concatenate([y_tr, yc])
    if args.specks:
        if maps is None:
            parser.error("--specks needs --labels")
        xs = speck_crops(brca / "train", consep / "train", target, maps, exclude=args.exclude_sites, context=context)
        x_tr, y_tr = torch.cat([x_tr, xs]), np.concatenate([y_tr, np.zeros(len(xs), dtype=bool)])
        print(f"{len(xs)} speck crops", flush=True)
    print(f"{len(y_tr)} training cells ({y_tr.mean():.2f} tumor), read in {time.perf_counter() - t0:.0f} s", flush=True)

    model = CellTyper(in_channels=4 if args.labels else 3, context=context).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=1e-4)
    per_epoch = len(y_tr) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * per_epoch)
    share = float(y_tr.mean())
    weight = torch.tensor([1 / (1 - share), 1 / share], dtype=torch.float32)  # N / N_c, as the segmentation loss
    weight /= weight.sum()
    target_t = torch.from_numpy(y_tr.astype(np.int64))
    log = []
    for epoch in range(args.epochs):
        te = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(y_tr)))
        total = 0.0
        for i in range(per_epoch):
            idx = order[i * args.batch : (i + 1) * args.batch]
            x = augment(x_tr[idx], rng, args.stain_jitter, model.views).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), target_t[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        row = {"epoch": epoch + 1, "loss": total / per_epoch, "seconds": time.perf_counter() - te}
        row.update({name: typing_scores(model, x, y) for name, (x, y) in checks.items()})
        log.append(row)
        print(json.dumps(row), flush=True)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "cell_typer.safetensors"), metadata=model.metadata())
    (args.out / "log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "epochs": log}))


if __name__ == "__main__":
    main()
