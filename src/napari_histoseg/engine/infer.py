"""Blockwise inference over an image of any size, as a generator of progress events ending in the result.

Memory stays bounded: a block is read (with the halo its windows need), segmented, opened, written and dropped;
at most a couple of blocks are being read ahead and one is being written. Nothing slide-sized is ever allocated
except the output store on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..analysis.instances import RULES_MPP
from ..analysis.opening import open_labels, radius_at
from ..classes import BACKGROUND, NUM_CLASSES
from ..io.store import ArraySink, LabelStore
from .allocator import tune_cpu_allocator
from .cell_typer import learnt_beside, retype_labels
from .predictor import BlockPredictor
from .resolution import ResolutionPlan, compute_shape, read_padded, to_compute, to_output
from .tiling import Block, WindowGrid, block_grid, make_block

#: Largest window and block sizes accepted: beyond them one window or block no longer fits in memory.
MAX_TILE, MAX_BLOCK = 4096, 16384

TissueTest = Callable[[int, int, int, int], bool]  # (y0, x0, y1, x1) in output pixels -> any tissue?
Normalize = Callable[[torch.Tensor], torch.Tensor]  # (3, h, w) RGB in [0, 1] -> the same, colours mapped


@dataclass(frozen=True)
class InferenceSettings:
    """What shapes the result. ``device``/``batch_size``/``compile`` only change speed."""

    tile: int = 256
    overlap: float = 0.25
    block: int = 2048
    opening_radius: int = 2  # px at the model's resolution (analysis.opening.radius_at converts it to the output grid)
    skip_background: bool = True
    probabilities: bool = False
    stain_normalize: bool = True  # map the slide's colours onto the model's training data (analysis/stain_stats.py)
    batch_size: int = 8
    device: str = "auto"
    compile: bool = False
    amp: bool = True  # bf16 autocast where it is faster (CUDA, CPUs with AMX or AVX512-BF16); False: fp32 throughout
    test_time_flips: bool = False  # average the logits over the four flips of each window (flips.py): 4x the work
    #: Retype each cell with the cell typer (cell_typer.py) from a 40 um crop around it. None: decided by the model
    #: (:meth:`for_model`): on for the bundled model, off for any other.
    cell_typer: bool | None = None
    prefetch: int = 2

    def __post_init__(self) -> None:
        if self.block < 256 or self.block % 256:
            raise ValueError(f"block must be a positive multiple of 256 px, got {self.block}")
        if self.block > MAX_BLOCK:
            raise ValueError(f"block {self.block} px is too large: at most {MAX_BLOCK} px (memory grows as its square)")
        if self.tile > MAX_TILE:
            raise ValueError(f"tile {self.tile} px is too large: at most {MAX_TILE} px (the model sees 256 px well)")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.opening_radius < 0:
            raise ValueError(f"opening radius must be >= 0, got {self.opening_radius}")
        WindowGrid.from_overlap(self.tile, self.overlap)  # validates tile and overlap

    def for_model(self, card) -> InferenceSettings:
        """These settings with ``cell_typer`` None decided for the model ``card`` describes: on for the network the
        bundled typer was trained beside (the bundled model), off for any other."""
        if self.cell_typer is not None:
            return self
        return replace(self, cell_typer=learnt_beside(card.sha256))

    def result_settings(self) -> dict:
        """The settings that determine the output (a resumed run must match them)."""
        keys = (
            "tile",
            "overlap",
            "block",
            "opening_radius",
            "skip_background",
            "probabilities",
            "stain_normalize",
            "test_time_flips",
            "cell_typer",
        )
        return {k: v for k, v in asdict(self).items() if k in keys}


@dataclass
class InferenceProgress:
    """A progress event: one more block finished (or skipped)."""

    blocks_done: int
    blocks_total: int
    windows_done: int
    windows_per_second: float
    elapsed_seconds: float
    eta_seconds: float | None
    blocks_skipped: int = 0
    blocks_resumed: int = 0


@dataclass
class InferenceResult:
    """The end of a run: where the labels are and what they hold."""

    class_counts: list[int]
    plan: ResolutionPlan
    shape: tuple[int, int]
    windows: int
    blocks_total: int
    blocks_skipped: int
    blocks_resumed: int
    timings: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # in-memory runs
    probabilities: np.ndarray | None = None
    store: LabelStore | None = None  # zarr runs

    def summary(self) -> dict:
        """JSON-serialisable summary (pixels per class, timings, plan)."""
        from ..classes import CLASS_NAMES

        return {
            "shape": list(self.shape),
            "pixels_per_class": dict(zip(CLASS_NAMES, self.class_counts, strict=True)),
            "windows": self.windows,
            "blocks": self.blocks_total,
            "blocks_skipped_background": self.blocks_skipped,
            "blocks_resumed": self.blocks_resumed,
            "level": self.plan.level,
            "resample_factor": self.plan.factor,
            "output_mpp": self.plan.output_mpp,
            "timings": self.timings,
        }


@dataclass
class BlockWork:
    block: Block  # in compute coordinates
    need: tuple[int, int, int, int]  # output px: core grown by the opening halo, clipped to the image
    core: tuple[int, int, int, int]  # output px
    index: tuple[int, int]
    region: np.ndarray | None = None  # output-grid pixels covering the read region (None: no tissue)
    region_origin: tuple[int, int] = (0, 0)  # output px of region[0, 0]
    window_starts: list[tuple[int, int]] = field(default_factory=list)
    background_starts: list[tuple[int, int]] = field(default_factory=list)


def _margin(factor: float) -> int:
    # Bilinear upsampling needs one neighbour beyond the region to match upsampling the whole image.
    return 1 if factor > 1 else 0


class BlockGeometry:
    """Maps blocks between the output grid and the compute grid the model sees."""

    def __init__(
        self, shape: tuple[int, int], settings: InferenceSettings, factor: float, output_mpp: float | None = None
    ):
        self.shape = shape
        self.factor = factor
        self.output_mpp = output_mpp  # of the output grid; None: unknown (the cell rules then take RULES_MPP)
        self.grid = WindowGrid.from_overlap(settings.tile, settings.overlap)
        self.block = settings.block
        if factor < 1 and settings.block % int(round(1 / factor)):
            raise ValueError(f"block {settings.block} must be divisible by {int(round(1 / factor))}")
        self.cshape = compute_shape(shape, factor)
        self.cblock = int(settings.block * factor)
        # The opening radius is given at the model's resolution; the labels are opened on the output grid.
        self.opening_radius = radius_at(settings.opening_radius, factor)
        self.halo = self.opening_radius * 2
        self.n_blocks = block_grid(shape, settings.block)

    def work(self, index: tuple[int, int]) -> BlockWork:
        f = self.factor
        by, bx = index
        h, w = self.shape
        core = (
            by * self.block,
            bx * self.block,
            min(h, (by + 1) * self.block),
            min(w, (bx + 1) * self.block),
        )
        need = (
            max(0, core[0] - self.halo),
            max(0, core[1] - self.halo),
            min(h, core[2] + self.halo),
            min(w, core[3] + self.halo),
        )
        cblock = make_block(index, self.cshape, self.cblock, self.grid, halo=int(math.ceil(self.halo * f)))
        return BlockWork(block=cblock, need=need, core=core, index=index)

    def output_region(self, work: BlockWork) -> tuple[int, int, int, int]:
        """Output-grid box whose resampling covers the block's compute read region."""
        ry0, rx0, ry1, rx1 = work.block.read
        m = _margin(self.factor)
        f = self.factor
        return (
            math.floor(ry0 / f) - m,
            math.floor(rx0 / f) - m,
            math.ceil(ry1 / f) + m,
            math.ceil(rx1 / f) + m,
        )


def plan_windows(work: BlockWork, geometry: BlockGeometry, tissue: TissueTest | None) -> None:
    """Split the block's windows into those to run and those that lie on background."""
    f, t = geometry.factor, geometry.grid.tile
    ry0, rx0 = work.block.read[:2]
    for wy in work.block.window_starts[0]:
        for wx in work.block.window_starts[1]:
            gy, gx = ry0 + int(wy), rx0 + int(wx)
            box = (gy / f, gx / f, (gy + t) / f, (gx + t) / f)
            has = tissue is None or tissue(
                *(int(math.floor(v)) for v in box[:2]), *(int(math.ceil(v)) for v in box[2:])
            )
            (work.window_starts if has else work.background_starts).append((int(wy), int(wx)))


def read_block(work: BlockWork, image, geometry: BlockGeometry, tissue: TissueTest | None) -> BlockWork:
    """Read the pixels a block needs (runs in a reader thread)."""
    if tissue is not None and not tissue(*work.need):
        return work  # nothing to compute: the whole block is background
    plan_windows(work, geometry, tissue)
    if work.window_starts:
        oy0, ox0, oy1, ox1 = geometry.output_region(work)
        work.region = read_padded(image, oy0, ox0, oy1, ox1)
        work.region_origin = (oy0, ox0)
    return work


def segment_block(
    work: BlockWork,
    predictor: BlockPredictor,
    geometry: BlockGeometry,
    settings: InferenceSettings,
    normalize: Normalize | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Labels (and optionally probabilities) of the block's core; ``None`` when the block is all background.

    ``normalize`` (a stain normaliser) maps the block's colours, at the slide's resolution, before resampling.
    """
    if work.region is None:
        return None, None
    f = geometry.factor
    oy0, ox0 = work.region_origin
    region = predictor.to_device(work.region)
    if normalize is not None:
        region = normalize(region)
    image = to_compute(region, f)
    # Offset of the compute read region inside the resampled output region.
    dy = work.block.read[0] - int(round(oy0 * f))
    dx = work.block.read[1] - int(round(ox0 * f))
    starts = [(y + dy, x + dx) for y, x in work.window_starts]
    background = [(y + dy, x + dx) for y, x in work.background_starts]
    scores = to_output(predictor.predict(image, starts, background), f)
    ny0, nx0, ny1, nx1 = work.need
    scores = scores[:, ny0 - oy0 : ny1 - oy0, nx0 - ox0 : nx1 - ox0]
    labels = scores.argmax(dim=0).to(torch.uint8).cpu().numpy()
    labels = open_labels(labels, geometry.opening_radius)
    if predictor.typer is not None:
        mpp = geometry.output_mpp or RULES_MPP
        labels = retype_labels(labels, region, mpp, predictor.typer, offset=(ny0 - oy0, nx0 - ox0))
    cy0, cx0, cy1, cx1 = work.core
    crop = (slice(cy0 - ny0, cy1 - ny0), slice(cx0 - nx0, cx1 - nx0))
    probs = None
    if settings.probabilities:
        probs = (scores / scores.sum(dim=0, keepdim=True))[:, crop[0], crop[1]].permute(1, 2, 0).cpu().numpy()
    return labels[crop], probs


def core_counts(work: BlockWork, labels: np.ndarray | None) -> np.ndarray:
    """Pixels per class in a block's core (``labels=None``: all background)."""
    if labels is None:
        counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        counts[BACKGROUND] = (work.core[2] - work.core[0]) * (work.core[3] - work.core[1])
        return counts
    return np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]


class RunTally:
    """Counts of a run in progress: turns finished blocks into progress events and the final result."""

    def __init__(self, todo: list[tuple[int, int]], done: dict[tuple[int, int], list[int]]):
        self.todo = todo
        self.counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        for index in todo:
            if index in done:
                self.counts += np.asarray(done[index])
        self.pending = [index for index in todo if index not in done]
        self.resumed = self.finished = len(todo) - len(self.pending)
        self.windows = self.skipped = 0
        self.compute_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, counts: np.ndarray, windows: int, skipped: bool) -> InferenceProgress:
        """Record one finished block; return the progress event to yield."""
        self.counts += counts
        self.windows += windows
        self.skipped += skipped
        self.finished += 1
        elapsed = time.perf_counter() - self.t0
        ran = self.finished - self.resumed
        return InferenceProgress(
            blocks_done=self.finished,
            blocks_total=len(self.todo),
            windows_done=self.windows,
            windows_per_second=self.windows / elapsed if elapsed > 0 else 0.0,
            elapsed_seconds=elapsed,
            eta_seconds=elapsed / ran * (len(self.todo) - self.finished) if ran else None,
            blocks_skipped=self.skipped,
            blocks_resumed=self.resumed,
        )

    def result(self, plan: ResolutionPlan, shape: tuple[int, int]) -> InferenceResult:
        elapsed = time.perf_counter() - self.t0
        return InferenceResult(
            class_counts=self.counts.tolist(),
            plan=plan,
            shape=shape,
            windows=self.windows,
            blocks_total=len(self.todo),
            blocks_skipped=self.skipped,
            blocks_resumed=self.resumed,
            timings={
                "total_s": elapsed,
                "compute_s": self.compute_s,
                "windows_per_second": self.windows / elapsed if elapsed > 0 else 0.0,
            },
        )


def all_blocks(geometry: BlockGeometry) -> list[tuple[int, int]]:
    ny, nx = geometry.n_blocks
    return [(by, bx) for by in range(ny) for bx in range(nx)]


def segment(
    image,
    predictor: BlockPredictor,
    sink: ArraySink | LabelStore,
    settings: InferenceSettings,
    plan: ResolutionPlan,
    *,
    tissue: TissueTest | None = None,
    blocks: list[tuple[int, int]] | None = None,
    normalize: Normalize | None = None,
) -> Generator[InferenceProgress | InferenceResult, None, InferenceResult]:
    """Segment ``image`` ((H, W, 3) array-like of the plan's level) block by block into ``sink``.

    Yields an :class:`InferenceProgress` after each block and finally the :class:`InferenceResult`.
    Closing the generator (Cancel) stops after the block in hand; finished blocks stay recorded in the sink.
    ``blocks`` restricts the run to some block indices (a region of interest); ``normalize`` is the stain
    normaliser applied to every block (see :func:`segment_block`).
    """
    tune_cpu_allocator()
    shape = (int(image.shape[0]), int(image.shape[1]))
    geometry = BlockGeometry(shape, settings, plan.factor, plan.output_mpp)
    tally = RunTally(blocks if blocks is not None else all_blocks(geometry), sink.done_blocks())

    reader = ThreadPoolExecutor(max_workers=max(1, settings.prefetch), thread_name_prefix="histoseg-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoseg-write")
    reads: list[Future] = []
    write: Future | None = None
    queue: Iterator[tuple[int, int]] = iter(tally.pending)

    def submit_next() -> None:
        index = next(queue, None)
        if index is not None:
            reads.append(reader.submit(read_block, geometry.work(index), image, geometry, tissue))

    try:
        for _ in range(max(1, settings.prefetch)):
            submit_next()
        while reads:
            work: BlockWork = reads.pop(0).result()
            submit_next()
            tc = time.perf_counter()
            labels, probs = segment_block(work, predictor, geometry, settings, normalize)
            tally.compute_s += time.perf_counter() - tc
            if write is not None:
                write.result()  # at most one block being written
            write = writer.submit(sink.write_block, work.index, work.core, labels, probs)
            yield tally.add(core_counts(work, labels), len(work.window_starts), labels is None)
        if write is not None:
            write.result()
    finally:
        for future in reads:
            future.cancel()
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)  # a block being written is finished, so the store stays valid

    result = tally.result(plan, shape)
    if isinstance(sink, ArraySink):
        result.labels = sink.labels
        result.probabilities = sink.probabilities
    else:
        result.store = sink
    yield result
    return result


def run(generator: Generator, on_event: Callable[[object], None] | None = None):
    """Drive a job generator synchronously (tests, CLI); return its last item (the result)."""
    last = None
    for event in generator:
        if on_event is not None:
            on_event(event)
        last = event
    return last
