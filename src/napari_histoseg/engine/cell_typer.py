"""Cell typer: a second look at each cell's type, from a 40 um crop around it.

The segmentation network decides a cell's type pixel by pixel from a 256 px window; on breast carcinoma from
other hospitals it calls most carcinoma nuclei non-tumor (docs/cell-typer.md). The typer is a small CNN that
reads an 80 px crop at 0.5 um/px centred on each cell found and says tumor or non-tumor; :func:`retype_labels`
rewrites the cells' pixels of a class map with its answer, so the labels layer, the counts and the cellularity
all follow it. Trained by ``scripts/train_cell_typer.py`` on BRCA-M2C points and CoNSeP cells.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.instances import cell_rules, cells_from_labels
from ..analysis.metrics import instance_centroids
from ..classes import NON_TUMOR, TUMOR

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "cell_typer.safetensors"
#: The card of the network the bundled typer was trained beside (its cells, specks and stain target).
TRAINED_BESIDE = WEIGHTS.with_name("default.json")
TYPER_MPP = 0.5  # um/px of the crops the typer reads
CROP = 80  # px at TYPER_MPP: 40 um, a nucleus and its neighbours
MEAN, STD = 0.7, 0.2  # of RGB in 0-1 on stain-normalised H&E
#: Cells smaller than this (um^2, boundary ring included) can be typed non-tumor whatever the typer says. Off (0):
#: the bundled typer learnt the specks the segmentation reports as non-tumor itself, and scored better without the
#: rule (docs/cell-typer.md); an earlier typer that never saw specks needed 10.
MIN_TUMOR_UM2 = 0.0


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CellTyper(nn.Module):
    """A stride-2 stem, three conv blocks with max pooling, global average pooling: logits (non-tumor, tumor).

    ``in_channels`` 3: the RGB crop; 4: and the segmentation's own call (:func:`labels_channel`), so the typer
    can learn where to trust the segmentation network and where to overrule it. ``context`` > 1 adds a second
    view of the same channels, centred on the same cell, ``context`` times wider and downsampled to CROP px
    (:func:`typer_crops`): the nest or gland around the cell at the cost of one wider first convolution.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), in_channels: int = 3, context: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.context = context
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels * self.views, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for cout in widths:
            layers += [_block(cin, cout), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 2)

    @property
    def views(self) -> int:
        """Crops read per cell: the crop, and the context view when there is one."""
        return 2 if self.context > 1 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C * views, CROP, CROP), each view RGB in [0, 1] (and the labels channel in [-1, 1]) -> (N, 2)
        logits."""
        n, _, h, w = x.shape
        x = x.reshape(n, self.views, self.in_channels, h, w)
        rgb = (x[:, :, :3] - MEAN) / STD
        x = torch.cat([rgb, x[:, :, 3:]], dim=2) if self.in_channels > 3 else rgb
        return self.head(self.features(x.reshape(n, -1, h, w)).mean(dim=(2, 3)))

    def metadata(self) -> dict[str, str]:
        """What :func:`load_cell_typer` needs besides the weights (saved in the safetensors header)."""
        return {"in_channels": str(self.in_channels), "context": str(self.context)}


@lru_cache(maxsize=1)
def _trained_beside_sha256() -> str | None:
    try:
        return json.loads(TRAINED_BESIDE.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def learnt_beside(model_sha256: str) -> bool:
    """Whether a model (by its weights' sha256) is the network the bundled typer was trained beside: the typer
    decides that network's cell types by default, and no other's (it would override a fine-tuned model's types)."""
    return bool(model_sha256) and model_sha256 == _trained_beside_sha256()


@lru_cache(maxsize=2)
def load_cell_typer(path: Path = WEIGHTS) -> CellTyper:
    """The typer with the weights at ``path`` (the bundled ones by default), in eval mode on the CPU."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        # Weights saved before the metadata: one view, channels from the first convolution.
        channels = int(meta.get("in_channels", state["features.0.weight"].shape[1]))
        model = CellTyper(in_channels=channels, context=int(meta.get("context", 1)))
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as err:
        raise ValueError(f"{path}: not a cell typer's weights ({err})") from err
    return model.eval()


def labels_channel(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, H, W) float: +1 where the class map says tumor, -1 non-tumor, 0 elsewhere."""
    labels = torch.as_tensor(np.asarray(labels))
    return ((labels == TUMOR).float() - (labels == NON_TUMOR).float())[None]


def to_typer_grid(image: torch.Tensor, mpp: float) -> tuple[torch.Tensor, float]:
    """(C, H, W) image (RGB in [0, 1], maybe a labels channel) at ``mpp`` resampled to TYPER_MPP (antialiased); returns
    it and the scale applied."""
    scale = mpp / TYPER_MPP
    if abs(scale - 1) < 1e-3:
        return image, 1.0
    out = F.interpolate(image[None], scale_factor=scale, mode="bilinear", antialias=scale < 1, align_corners=False)
    return out[0], scale


def crops_at(image: torch.Tensor, centres: np.ndarray, size: int = CROP) -> torch.Tensor:
    """(N, C, size, size) crops of a (C, H, W) TYPER_MPP image centred on ``centres`` ((N, 2) y, x px); mirrored past
    edges."""
    half = size // 2
    h, w = image.shape[1:]
    mode = "reflect" if min(h, w) > half else "replicate"
    padded = F.pad(image[None], (half, half, half, half), mode=mode)[0]
    yx = np.clip(np.round(np.asarray(centres, dtype=np.float64)).astype(np.int64), 0, [h - 1, w - 1])
    if len(yx) == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    rows = torch.as_tensor(yx[:, 0], device=image.device)[:, None] + torch.arange(size, device=image.device)
    cols = torch.as_tensor(yx[:, 1], device=image.device)[:, None] + torch.arange(size, device=image.device)
    return padded[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)


def typer_crops(grid: torch.Tensor, centres: np.ndarray, context: int = 1, size: int = CROP) -> torch.Tensor:
    """What a typer with ``context`` reads at ``centres`` of a TYPER_MPP ``grid``: :func:`crops_at`'s crops of
    ``size`` px and, for ``context`` > 1, the same cells' crops of the grid downsampled ``context`` times (the
    views side by side on the channel axis)."""
    crops = crops_at(grid, centres, size)
    if context <= 1:
        return crops
    coarse = F.avg_pool2d(grid[None], context, ceil_mode=True)[0]
    wide = crops_at(coarse, (np.asarray(centres, dtype=np.float64) + 0.5) / context - 0.5, size)
    return torch.cat([crops, wide], dim=1)


@torch.inference_mode()
def tumor_probability(model: nn.Module, crops: torch.Tensor, batch: int = 256) -> np.ndarray:
    """p(tumor) per crop, the mean over the four 90-degree rotations."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(crops), batch):
        x = crops[i : i + batch].to(device).float().contiguous(memory_format=torch.channels_last)
        p = sum(F.softmax(model(torch.rot90(x, k, (2, 3))).float(), dim=1)[:, 1] for k in range(4)) / 4
        out.append(p.cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def typer_answers(
    labels: np.ndarray, image: torch.Tensor, mpp: float, model: nn.Module, offset: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells of ``labels`` and the typer's p(tumor) for each: ``(instances, classes, centres, p)``.

    ``instances`` and ``classes`` are :func:`cells_from_labels`'s under the cell rules at ``mpp``, ``centres`` the
    cells' centroids (N, 2) in ``labels``' pixels. ``image`` is the (3, H, W) stain-normalised RGB in [0, 1] at
    ``mpp`` that covers ``labels``, whose pixel (0, 0) is ``image``'s pixel ``offset``; ``image`` may reach beyond
    ``labels`` (context for the crops). A 4-channel typer also gets ``labels`` as :func:`labels_channel`.
    """
    instances, classes = cells_from_labels(labels, **cell_rules(mpp))
    count = len(classes) - 1
    centres = instance_centroids(instances, count)
    if count == 0:
        return instances, classes, centres, np.zeros(0, dtype=np.float32)
    if getattr(model, "in_channels", 3) == 4:
        own = image.new_zeros((1, *image.shape[1:]))
        oy, ox = offset
        own[:, oy : oy + labels.shape[0], ox : ox + labels.shape[1]] = labels_channel(labels).to(image)
        image = torch.cat([image, own])
    grid, scale = to_typer_grid(image, mpp)
    at = (centres + np.asarray(offset, dtype=np.float64) + 0.5) * scale - 0.5
    return instances, classes, centres, tumor_probability(model, typer_crops(grid, at, getattr(model, "context", 1)))


def retype_labels(
    labels: np.ndarray,
    image: torch.Tensor,
    mpp: float,
    model: nn.Module,
    offset: tuple[int, int] = (0, 0),
    min_tumor_um2: float = MIN_TUMOR_UM2,
) -> np.ndarray:
    """``labels`` with every cell's tumor / non-tumor pixels set to the typer's answer for that cell.

    The cells, ``image`` and ``offset`` are as in :func:`typer_answers`; pixels of specks the cell rules drop keep
    their class. A cell under ``min_tumor_um2`` is non-tumor whatever the typer says.
    """
    instances, classes, _, p = typer_answers(labels, image, mpp, model, offset)
    count = len(classes) - 1
    if count == 0:
        return labels
    typed = np.zeros(count + 1, dtype=labels.dtype)
    area_um2 = np.bincount(instances.ravel(), minlength=count + 1)[1:] * mpp * mpp
    typed[1:] = np.where((p >= 0.5) & (area_um2 >= min_tumor_um2), TUMOR, NON_TUMOR)
    cell_px = (instances > 0) & ((labels == TUMOR) | (labels == NON_TUMOR))
    out = labels.copy()
    out[cell_px] = typed[instances[cell_px]]
    return out
