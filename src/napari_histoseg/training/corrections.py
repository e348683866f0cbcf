"""Fine-tuning on corrected predictions: only what the user reviewed teaches, the rest holds the model where it was.

A pair made from a corrected prediction (``export_pairs.save_pair(..., reviewed=..., mpp=...)``) is the model's
whole output of which the user changed or confirmed a few cells (``DIR/reviewed/<name>.png``). Trained as an
ordinary pair, ~99% of its pixels would re-teach the model its own mistakes and drown the corrections. So each
pixel of such a pair gets a code (:func:`encode_targets`):

- reviewed, trained: its corrected class (0-3), at full weight;
- reviewed, held aside: :data:`~.point_targets.IGNORE`: about a fifth of the reviewed cells of each image (when it
  has at least :data:`MIN_CELLS_TO_HOLD`) are never trained on and measure whether the corrections generalise;
- not reviewed: ``KEEP + c`` (c the class the starting model gave it; ``KEEP + CELL_ANY`` for a cell): held
  where the starting model had it by distillation from a frozen copy of that model, run on the same augmented
  patch (:func:`distillation_loss`): where cells are and where they end, but by default not their types, since
  holding them would re-teach on hundreds of cells the very mistake the user corrected on a few dozen.

The loss (:func:`correction_loss`) is the weighted cross-entropy of the reviewed pixels plus ``keep_weight`` times
the distillation term of the kept ones, each a mean over its own pixels, so that a few corrected cells count as
much as the rest of the image whatever their share of its pixels. Why soft targets and not the starting model's
hard labels: docs/fine-tuning.md.

Validation (:func:`.review.review_metrics`) runs on the corrected images themselves (the only ones the user judged), on
the model's grid with its stain target as inference sees them: the share of reviewed cells whose type agrees
with the user's (trained and held-aside cells apart), and the share of the untouched pixels whose kind
(background, cell, boundary) changed from the starting model's (``untouched_changed``; cells whose type changed
are counted apart, ``untouched_retyped``: a corrected systematic mistake should change them). The starting model is
measured first (epoch 0, saved as the first "best"); an epoch becomes best only if it beats it, and never when a
class the starting model found has (nearly) disappeared or the held-aside agreement fell by more than its standard
error (:func:`collapse_problems`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from ..analysis.stain_stats import LabStats
from ..classes import BACKGROUND, BOUNDARY, NON_TUMOR, TUMOR
from ..engine.resolution import plan_resolution, rgb_to_compute
from .loss import weighted_cross_entropy
from .point_targets import CELL_ANY, IGNORE
from .point_training import normalize_stain
from .samples import Sample

#: Target code base: ``KEEP + c`` = "not reviewed; the starting model said class c" (held close to it).
KEEP = 8
#: Share of each image's reviewed cells held aside (never trained on) to check that the corrections generalise.
HELD_SHARE = 0.2
#: An image needs at least this many reviewed cells for some to be held aside.
MIN_CELLS_TO_HOLD = 5
#: Weight of the term that holds the unreviewed pixels at the starting model's output (1 = as much as the
#: corrections), and how much of it holds their cell types too (0: where cells are and end only; see
#: :func:`distillation_loss`).
DEFAULT_KEEP_WEIGHT = 2.0
DEFAULT_KEEP_TYPES = 0.0

#: Fine-tuning defaults (the Train widget's and the benchmark's), see docs/fine-tuning.md: the step-size table
#: (benchmarks/bench_finetune_steps.py: RMSprop's first steps at 1e-4 re-typed 70% of the pixels of its own batch)
#: and the decoder-side-only runs (the encoder frozen, CoNSeP detection F1 fell by 0.004 instead of 0.026).
FINETUNE_DEFAULTS = {"optimizer": "adam", "lr": 2e-5, "warmup": 20, "scheduler": "cosine", "trainable": "decoder"}


@dataclass
class ReviewedImage:
    """A corrected pair on the model's grid: image (colours mapped onto the stain target), corrected labels,
    reviewed pixels, the reviewed regions (``regions``, 1..n) and which of them are held aside."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray
    regions: np.ndarray
    held_ids: np.ndarray

    @property
    def held(self) -> np.ndarray:
        return np.isin(self.regions, self.held_ids) & (self.regions > 0)


def _nearest(array: np.ndarray, factor: float, shape: tuple[int, int]) -> np.ndarray:
    if factor > 1:
        k = int(round(factor))
        array = array.repeat(k, axis=0).repeat(k, axis=1)
    elif factor < 1:
        k = int(round(1 / factor))
        array = array[k // 2 :: k, k // 2 :: k]
    return np.ascontiguousarray(array[: shape[0], : shape[1]])


def resample_sample(sample: Sample, model_mpp: float | None) -> Sample:
    """``sample`` on the model's grid when its pair records its own um/px (the power of two inference uses):
    image bilinear (or averaged), labels, instances and reviewed pixels nearest."""
    if sample.mpp is None or model_mpp is None:
        return sample
    factor = plan_resolution([sample.mpp], model_mpp).factor
    if factor == 1.0:
        return sample
    image = rgb_to_compute(sample.image, factor)
    shape = image.shape[:2]
    labels = _nearest(sample.labels, factor, shape)
    inst = None if sample.inst is None else _nearest(sample.inst, factor, shape)
    reviewed = None if sample.reviewed is None else _nearest(sample.reviewed, factor, shape)
    return Sample(sample.name, image, labels, inst, reviewed, sample.mpp / factor)


#: Class -> kind of pixel for the untouched-pixel change: background, cell (either type), boundary.
PIXEL_KIND = np.array([0, 1, 1, 3], dtype=np.uint8)


def held_regions(reviewed: np.ndarray, seed: int, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The connected reviewed regions (about one cell each) and the ids of those held aside (see module doc)."""
    regions, n = ndi.label(reviewed)
    if n < MIN_CELLS_TO_HOLD:
        return regions, np.zeros(0, dtype=np.int64)
    salt = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")
    order = np.random.default_rng([int(seed), salt]).permutation(n) + 1
    return regions, np.sort(order[: max(1, int(round(HELD_SHARE * n)))])


def encode_targets(labels: np.ndarray, reviewed: np.ndarray, held: np.ndarray | None = None) -> np.ndarray:
    """Training codes (H, W) uint8: reviewed pixels their class, held-aside ones IGNORE, the rest ``KEEP + c``
    (``KEEP + CELL_ANY`` for a cell pixel)."""
    kept = np.where((labels == TUMOR) | (labels == NON_TUMOR), CELL_ANY, labels)
    codes = np.where(reviewed, labels, KEEP + kept).astype(np.uint8)
    if held is not None:
        codes[held] = IGNORE
    return codes


def prepare_samples(
    train: Sequence[Sample], val: Sequence[Sample], model_mpp: float | None, stain: LabStats | None, seed: int
) -> tuple[list[Sample], list[Sample], list[ReviewedImage]]:
    """Training and validation samples on the model's grid; corrected pairs with their codes (module doc), their
    colours mapped onto ``stain``, and as :class:`ReviewedImage` for :func:`review_metrics`."""
    train_out: list[Sample] = []
    review: list[ReviewedImage] = []
    for sample in train:
        factor = plan_resolution([sample.mpp], model_mpp).factor if sample.mpp and model_mpp else 1.0
        sample = resample_sample(sample, model_mpp)
        if sample.reviewed is None:
            train_out.append(sample)
            continue
        image = normalize_stain(sample.image, stain)
        regions, held_ids = held_regions(sample.reviewed, seed, sample.name)
        item = ReviewedImage(sample.name, image, sample.labels, sample.reviewed, regions, held_ids)
        review.append(item)
        codes = encode_targets(sample.labels, sample.reviewed, item.held)
        if factor > 1:
            # Labels drawn at a coarser resolution than the model's say nothing exact about the finer pixels along
            # their edges (the thin boundary ring, most of all, is lost at 20x): there the reviewed pixels are held
            # at the starting model's output like the unreviewed ones, not taught (a hard "cell" or "background"
            # on the model's ring would teach it to drop the ring everywhere).
            size = 2 * int(round(factor)) + 1
            edges = ndi.maximum_filter(sample.labels, size) != ndi.minimum_filter(sample.labels, size)
            taught_edges = edges & sample.reviewed & ~item.held
            codes[taught_edges] = encode_targets(sample.labels, np.zeros_like(sample.reviewed))[taught_edges]
        train_out.append(Sample(sample.name, image, codes, None, None, sample.mpp))
    val_out = [resample_sample(s, model_mpp) for s in val]
    return train_out, val_out, review


def correction_loss(
    logits: torch.Tensor,
    codes: torch.Tensor,
    class_weights: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    keep_weight: float = DEFAULT_KEEP_WEIGHT,
    keep_types: float = DEFAULT_KEEP_TYPES,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reviewed pixels' class-weighted cross-entropy + ``keep_weight`` x the distillation term of the others.

    With ``teacher_logits`` (the frozen starting model on the same patch), a reviewed pixel teaches only what the
    user changed: where its kind (background, cell, boundary) is the one the starting model decided, a cell
    teaches its type alone (``-log p_type / (p_tumor + p_non_tumor)``) and its kind is held with the unreviewed
    pixels (:func:`distillation_loss`); where the user changed the kind (an erased false cell, a painted missed
    one) it teaches its class. A full cross-entropy on confirmed pixels would push down everywhere the classes the
    few reviewed cells do not contain (the boundary ring first). Without a teacher: plain cross-entropy on the
    reviewed pixels, the others ignored.
    """
    keep = (codes >= KEEP) & (codes <= KEEP + CELL_ANY)
    if teacher_logits is None:
        return weighted_cross_entropy(logits, torch.where(keep, torch.full_like(codes, IGNORE), codes), class_weights)
    num_classes = logits.shape[1]
    taught = codes < num_classes
    safe = torch.where(taught, codes, torch.zeros_like(codes))
    decided = teacher_logits.detach()
    if logit_bias is not None:
        decided = decided + logit_bias.to(decided.dtype).view(1, -1, 1, 1)
    kind_of = torch.as_tensor(PIXEL_KIND, device=codes.device, dtype=torch.long)
    same_kind = taught & (kind_of[decided.argmax(dim=1)] == kind_of[safe])
    type_only = same_kind & ((safe == TUMOR) | (safe == NON_TUMOR))
    learn = (taught & ~same_kind) | type_only
    log_p = torch.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, safe[:, None])[:, 0]
    nll = torch.where(type_only, nll + torch.logsumexp(log_p[:, [TUMOR, NON_TUMOR]], dim=1), nll)
    weights = class_weights[safe] * learn
    loss = (nll * weights).sum() / weights.sum().clamp_min(1e-12)
    held = keep | same_kind
    if keep_weight > 0 and bool(held.any()):
        loss = loss + keep_weight * distillation_loss(
            logits, teacher_logits, held, keep_types, class_weights, logit_bias
        )
    return loss


#: Classes of each kind of pixel (background, cell of either type, boundary) for the distillation term.
_KIND_GROUPS = ((BACKGROUND,), (TUMOR, NON_TUMOR), (BOUNDARY,))


def _kind_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.logsumexp(log_p[:, list(group)], dim=1) for group in _KIND_GROUPS], dim=1)


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    keep_types: float = DEFAULT_KEEP_TYPES,
    class_weights: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """How far the model's class probabilities moved from the starting model's, over the pixels of ``mask``.

    Per pixel ``KL_kind + keep_types * (KL - KL_kind)``: ``KL`` is the Kullback-Leibler divergence from the
    starting model's softmax to the model's over the four classes, ``KL_kind`` the same over the three kinds
    (background, cell, boundary). ``KL - KL_kind`` is what the split of a cell between the two types adds, so
    ``keep_types`` 0 holds where cells are and where they end but lets their types follow the corrections, and 1
    holds everything (plain distillation). The mean is weighted per pixel by the class weight of the starting
    model's class there (its expectation under its softmax), as the cross-entropy is: a plain mean would be a mean
    over background, and the thin boundary ring, a few percent of the pixels, would be free to vanish.

    With ``logit_bias`` (the card's, added to both models' logits) the distributions compared are those inference
    decides on: the raw softmax of a model trained with class weights puts most of a boundary pixel's mass on
    "boundary" whether or not the bias leaves it boundary, so a raw KL barely moves while decisions flip.
    """
    if logit_bias is not None:
        bias = logit_bias.to(logits.dtype).view(1, -1, 1, 1)
        logits, teacher_logits = logits + bias, teacher_logits + bias
    log_p = torch.log_softmax(logits, dim=1)
    log_t = torch.log_softmax(teacher_logits.detach(), dim=1)
    p_t = log_t.exp()
    full = (p_t * (log_t - log_p)).sum(dim=1)
    kind_t, kind_p = _kind_log_probs(log_t), _kind_log_probs(log_p)
    kind = (kind_t.exp() * (kind_t - kind_p)).sum(dim=1)
    per_pixel = kind + keep_types * (full - kind)
    weights = mask.to(per_pixel.dtype)
    if class_weights is not None:
        weights = weights * torch.einsum("bchw,c->bhw", p_t, class_weights.to(p_t.dtype))
    return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-12)
