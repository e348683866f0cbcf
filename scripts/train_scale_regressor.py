"""Train the size model (engine/scale_regressor.py): log2(um/px) from a 128 px RGB tissue tile.

Train images only: CoNSeP train (3x3 patch grids stitched to 768 px regions, 0.25 um/px) and BRCA-M2C train (about
0.5 um/px). Each sample is a random crop resampled to a random resolution (log-uniform, 0.18-1.25 um/px for CoNSeP,
0.35-1.25 for BRCA-M2C so that it is upsampled at most 1.43x; 15% left at their own resolution), with a random
resampling kernel, flips, stain jitter in optical density, blur or sharpening, noise and JPEG re-compression at a
random quality (before or after resampling), so that the network cannot read the scale off resampling artefacts.
Resumable: ``<out>/last.pt`` every ``--save-every`` steps, a log at ``<out>/log.txt``, the weights as
``<out>/scale_regressor.safetensors`` (and ``best.safetensors``, the lowest monitor L1).

On a GPU server: ``--pack DIR`` writes the train and val images once as JPEG (quality 95, no chroma subsampling;
about a third of the PNGs) to carry there, ``--packed DIR`` trains from them, ``--workers`` draws the samples in
that many processes, ``--minutes`` ends the schedule at a time budget, and several ``--widths`` train one model
each on the same samples (``<out>/w<widths>/``).

Usage: python scripts/train_scale_regressor.py --out runs/scale [--steps 3000] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi
from skimage.io import imread

from napari_histoseg.engine.scale_regressor import CROP, ScaleNet

# um/px sampled per data set; the top lies well above the 1.0 um/px (10x) the estimate is checked at, as an L1
# regressor pulls its readings inwards near the ends of its training range
RANGES = {"consep": (0.18, 1.6), "brca": (0.35, 1.6)}
NATIVE = 0.15  # share of samples left at the image's own resolution (unresampled, as the check's 0.25 cases)


def sources(data: Path, split: str) -> list[tuple[str, np.ndarray, float]]:
    """(data set, image, um/px) of a split."""
    from calibrate_mpp_estimate import consep_regions  # the same stitched regions the check reads (scripts/)

    out = [("consep", r, 0.25) for r in consep_regions(data / "consep" / split)]
    out += [("brca", imread(p)[..., :3], 0.5) for p in sorted((data / "brca-m2c" / split / "input").glob("*.png"))]
    return out


def pack(data: Path, folder: Path) -> None:
    """Write the train and val sources as ``<split>_<set>_<um/px>_<k>.jpg`` (quality 95, 4:4:4)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for k, (kind, image, mpp) in enumerate(sources(data, split)):
            Image.fromarray(image).save(folder / f"{split}_{kind}_{mpp}_{k:03d}.jpg", quality=95, subsampling=0)


def packed_sources(folder: Path, split: str) -> list[tuple[str, np.ndarray, float]]:
    """The sources :func:`pack` wrote for ``split``."""
    out = []
    for path in sorted(folder.glob(f"{split}_*.jpg")):
        _, kind, mpp, _ = path.stem.split("_")
        out.append((kind, np.array(Image.open(path).convert("RGB")), float(mpp)))
    if not out:
        raise SystemExit(f"{folder}: no packed {split} images (write them with --pack)")
    return out


def jpeg(tile: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def resize(tile: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Resize to size x size with a random kernel (antialiased when shrinking)."""
    if tile.shape[0] == size:
        return tile
    x = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1)[None].float()
    shrink = size < tile.shape[0]
    mode = rng.choice(["bilinear", "bicubic", "area"] if shrink else ["bilinear", "bicubic"])
    kw = {} if mode == "area" else {"align_corners": False, "antialias": shrink}
    y = F.interpolate(x, size=(size, size), mode=mode, **kw)
    return y[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


def stain_jitter(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mix and scale the optical density channels a little, then a small brightness shift."""
    od = -np.log((tile.astype(np.float32) + 1) / 256)
    mix = np.eye(3, dtype=np.float32) + rng.normal(0, 0.06, (3, 3)).astype(np.float32)
    od = od @ (mix * rng.uniform(0.7, 1.3, 3).astype(np.float32)) * rng.uniform(0.8, 1.2)
    rgb = 256 * np.exp(-od) - 1 + rng.normal(0, 6)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def sharpen(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unsharp mask of random strength, so that sharpness does not tell how far a tile was resampled."""
    x = tile.astype(np.float32)
    blurred = ndi.gaussian_filter(x, (rng.uniform(0.5, 1.5),) * 2 + (0,))
    return np.clip(x + rng.uniform(0.3, 1.0) * (x - blurred), 0, 255).astype(np.uint8)


def sample(items: list[tuple[str, np.ndarray, float]], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One augmented CROP px tile and its log2(um/px)."""
    kind, image, mpp = items[rng.integers(len(items))]
    lo, hi = RANGES[kind]
    target = mpp if rng.random() < NATIVE else 2 ** rng.uniform(math.log2(lo), math.log2(hi))
    side = min(int(round(CROP * target / mpp)), *image.shape[:2])
    target = side * mpp / CROP  # the exact resolution after rounding
    y, x = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
    tile = np.rot90(image[y : y + side, x : x + side], rng.integers(4))
    tile = tile[:, ::-1] if rng.random() < 0.5 else tile
    tile = np.ascontiguousarray(tile)
    if rng.random() < 0.3:
        tile = jpeg(tile, int(rng.integers(20, 96)))
    tile = stain_jitter(resize(tile, CROP, rng), rng)
    if rng.random() < 0.3:
        tile = ndi.gaussian_filter(tile, (rng.uniform(0.3, 1.0),) * 2 + (0,))
    elif rng.random() < 0.25:
        tile = sharpen(tile, rng)
    if rng.random() < 0.2:
        tile = np.clip(tile + rng.normal(0, rng.uniform(2, 8), tile.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        tile = jpeg(tile, int(rng.integers(15, 96)))
    return tile, math.log2(target)


def batch(items, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tiles, ys = zip(*(sample(items, rng) for _ in range(n)), strict=True)
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2), torch.tensor(ys, dtype=torch.float32)


class Samples(torch.utils.data.IterableDataset):
    """An endless stream of batches, each worker process with its own random generator."""

    def __init__(self, items, seed: int, size: int) -> None:
        self.items, self.seed, self.size = items, seed, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield batch(self.items, rng, self.size)


def learning_rate(peak: float, done: float) -> float:
    """One cycle over ``done`` in [0, 1]: 5% linear warm-up from peak/25, then cosine down to peak/1000."""
    if done < 0.05:
        return peak / 25 + (peak - peak / 25) * done / 0.05
    t = min(1.0, (done - 0.05) / 0.95)
    return peak / 1000 + (peak - peak / 1000) * 0.5 * (1 + math.cos(math.pi * t))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--pack", type=Path, help="write the images as JPEG to this folder and stop")
    parser.add_argument("--packed", type=Path, help="train from the images --pack wrote")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, help="end the schedule after this long, whatever --steps says")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--widths", action="append", help="stage widths, e.g. 24,32,64,96 (repeat: one model each; default ScaleNet's)"
    )
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="processes drawing samples (0: this one)")
    parser.add_argument("--monitor", type=int, default=192, help="val crops in the fixed monitor set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.pack and not args.out:
        parser.error("--out is needed to train")
    return args


def save_weights(model: ScaleNet, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def main() -> None:
    args = parse_args()
    if args.pack:
        pack(args.data, args.pack)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    widths = [tuple(int(w) for w in spec.split(",")) for spec in args.widths] if args.widths else [None]
    folders = [args.out] if len(widths) == 1 else [args.out / ("w" + "-".join(map(str, w))) for w in widths]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    read = (lambda split: packed_sources(args.packed, split)) if args.packed else (lambda s: sources(args.data, s))
    items = read("train")
    val_x, val_y = batch(read("val"), np.random.default_rng(12345), args.monitor)  # fixed set, never trained on
    val_x, val_y = val_x.to(device), val_y.to(device)
    models = [(ScaleNet(w) if w else ScaleNet()).to(device) for w in widths]
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=1e-4) for m in models]
    step, spent, best = 0, 0.0, [math.inf] * len(models)
    last = args.out / "last.pt"
    if last.exists():
        state = torch.load(last, weights_only=False, map_location=device)
        for model, opt, saved in zip(models, opts, state["models"], strict=True):
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
        step, spent, best = state["step"], state["spent"], state["best"]
    # a resumed run draws new samples
    stream = torch.utils.data.DataLoader(
        Samples(items, args.seed + step, args.batch),
        batch_size=None,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers else None,
        persistent_workers=False,
    )
    log = (args.out / "log.txt").open("a")
    t0, losses = time.perf_counter() - spent, [[] for _ in models]
    budget = args.minutes * 60 if args.minutes else math.inf
    for x, y in stream:
        elapsed = time.perf_counter() - t0
        done = max(step / args.steps, elapsed / budget)
        if done >= 1:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for k, (model, opt) in enumerate(zip(models, opts, strict=True)):
            for group in opt.param_groups:
                group["lr"] = learning_rate(args.lr, done)
            model.train()
            loss = F.l1_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[k].append(loss.item())
        step += 1
        if step % args.save_every == 0:
            checkpoint(args, models, opts, folders, val_x, val_y, step, elapsed, best, losses, log)
    if losses[0]:  # steps since the last checkpoint
        checkpoint(args, models, opts, folders, val_x, val_y, step, time.perf_counter() - t0, best, losses, log)
    for model, folder in zip(models, folders, strict=True):
        save_weights(model, folder / "scale_regressor.safetensors")


def checkpoint(args, models, opts, folders, val_x, val_y, step, elapsed, best, losses, log) -> None:
    """Log each model's train and monitor L1, keep its best weights, and write ``last.pt``."""
    for k, (model, folder) in enumerate(zip(models, folders, strict=True)):
        model.eval()
        with torch.no_grad():
            val = (model(val_x) - val_y).abs()
        line = (
            f"{folder.name} step {step} train L1 {np.mean(losses[k] or [math.nan]):.4f} val L1 {val.mean():.4f} "
            f"(median {val.median():.4f}, within 20% {(val < math.log2(1.2)).float().mean():.2f}) {elapsed:.0f} s"
        )
        print(line, flush=True)
        log.write(line + "\n")
        losses[k].clear()
        if val.mean().item() < best[k]:
            best[k] = val.mean().item()
            save_weights(model, folder / "best.safetensors")
    log.flush()
    state = {
        "models": [{"model": m.state_dict(), "opt": o.state_dict()} for m, o in zip(models, opts, strict=True)],
        "step": step,
        "spent": elapsed,
        "best": best,
    }
    torch.save(state, args.out / "last.tmp")
    (args.out / "last.tmp").replace(args.out / "last.pt")


if __name__ == "__main__":
    main()
