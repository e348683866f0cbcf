"""Train the size model (engine/scale_regressor.py): log2(um/px) from a 128 px RGB tissue tile.

Train images only: CoNSeP train (3x3 patch grids stitched to 768 px regions, 0.25 um/px) and BRCA-M2C train (about
0.5 um/px). Each sample is a random crop resampled to a random resolution (log-uniform, 0.18-1.25 um/px for CoNSeP,
0.35-1.25 for BRCA-M2C so that it is upsampled at most 1.43x; 15% left at their own resolution), with a random
resampling kernel, flips, stain jitter in optical density, blur or sharpening, noise and JPEG re-compression at a
random quality (before or after resampling), so that the network cannot read the scale off resampling artefacts.
Resumable: ``<out>/last.pt`` every ``--save-every`` steps, a log at ``<out>/log.txt``, the weights as
``<out>/scale_regressor.safetensors``.

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
from calibrate_mpp_estimate import consep_regions  # the same stitched regions the check reads (scripts/)
from PIL import Image
from scipy import ndimage as ndi
from skimage.io import imread

from napari_histoseg.engine.scale_regressor import CROP, ScaleNet

RANGES = {"consep": (0.18, 1.25), "brca": (0.35, 1.25)}  # um/px sampled per data set
NATIVE = 0.15  # share of samples left at the image's own resolution (unresampled, as the check's 0.25 cases)


def sources(data: Path, split: str) -> list[tuple[str, np.ndarray, float]]:
    """(data set, image, um/px) of a split."""
    out = [("consep", r, 0.25) for r in consep_regions(data / "consep" / split)]
    out += [("brca", imread(p)[..., :3], 0.5) for p in sorted((data / "brca-m2c" / split / "input").glob("*.png"))]
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    items = sources(args.data, "train")
    val_items = sources(args.data, "val")
    val_x, val_y = batch(val_items, np.random.default_rng(12345), 192)  # fixed monitor set (never trained on)
    model = ScaleNet()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    step, last = 0, args.out / "last.pt"
    if last.exists():
        state = torch.load(last, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
    rng = np.random.default_rng(args.seed + step)  # a resumed run draws new samples
    log = (args.out / "log.txt").open("a")
    t0, losses = time.perf_counter(), []
    while step < args.steps:
        model.train()
        x, y = batch(items, rng, args.batch)
        loss = F.l1_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        if step % args.save_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                val = (model(val_x) - val_y).abs()
            line = (
                f"step {step} train L1 {np.mean(losses):.4f} val L1 {val.mean():.4f} (median {val.median():.4f}, "
                f"within 20% {(val < math.log2(1.2)).float().mean():.2f}) {time.perf_counter() - t0:.0f} s"
            )
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
            losses = []
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step}
            torch.save(state, args.out / "last.tmp")
            (args.out / "last.tmp").replace(last)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "scale_regressor.safetensors"))


if __name__ == "__main__":
    main()
