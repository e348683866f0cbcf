"""The same slide blocks as dask.distributed tasks: one worker per GPU (or CPU process), one shared zarr store.

Each worker loads the model once (a worker plugin), opens the slide itself (no slide pixels pass through the
scheduler) and writes its blocks, disjoint chunks of the one output store. The driver only sends block indices
and the small tissue mask, and collects class counts. A worker lost mid-run has its blocks rerun elsewhere by dask;
blocks are written whole and idempotently, so the output is the same as a single-process run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from distributed import WorkerPlugin

from .allocator import tune_cpu_allocator
from .infer import (
    BlockGeometry,
    InferenceProgress,
    InferenceResult,
    InferenceSettings,
    RunTally,
    all_blocks,
    core_counts,
    read_block,
    segment_block,
)
from .resolution import ResolutionPlan
from .stain_transform import ReinhardNormalizer

log = logging.getLogger(__name__)

PLUGIN_NAME = "napari-histoseg-model"


class SchedulerError(ValueError):
    """A scheduler address that cannot be reached or parsed."""


@dataclass(frozen=True)
class BlockTask:
    """What a worker needs to run blocks of one slide job (small and picklable)."""

    slide: str
    level: int
    store: str
    settings: InferenceSettings
    plan: ResolutionPlan
    downsample: float
    normalize: ReinhardNormalizer | None = None  # the slide's stain normaliser (a few numbers)


class ModelPlugin(WorkerPlugin):
    """Worker plugin: load the checkpoint once per worker and keep slides and stores open between tasks."""

    name = PLUGIN_NAME

    def __init__(self, checkpoint: str, settings: InferenceSettings):
        self.checkpoint = checkpoint
        self.settings = settings

    def setup(self, worker=None) -> None:
        from ..model.checkpoint import load_checkpoint
        from .jobs import make_predictor

        tune_cpu_allocator()
        model, card = load_checkpoint(self.checkpoint)
        self.predictor = make_predictor(model, self.settings.for_model(card), card.logit_bias)
        self.slides: dict[str, object] = {}
        self.stores: dict[str, object] = {}

    def teardown(self, worker=None) -> None:
        for slide in self.slides.values():
            slide.close()

    def slide(self, path: str):
        from ..io.slide import open_slide

        if path not in self.slides:
            self.slides[path] = open_slide(path)
        return self.slides[path]

    def store(self, path: str):
        from ..io.store import LabelStore

        if path not in self.stores:
            self.stores[path] = LabelStore.open(path, mode="r+")
        return self.stores[path]


def run_block(index: tuple[int, int], task: BlockTask, tissue: tuple[np.ndarray, float] | None) -> dict:
    """One block on a worker: read from the slide, segment, write to the store. Returns counts for the tally."""
    from distributed import get_worker

    from .jobs import tissue_test

    plugin: ModelPlugin = get_worker().plugins[PLUGIN_NAME]
    image = plugin.slide(task.slide).levels[task.level]
    geometry = BlockGeometry(
        (int(image.shape[0]), int(image.shape[1])), task.settings, task.plan.factor, task.plan.output_mpp
    )
    test = None if tissue is None else tissue_test(*tissue, task.downsample)
    work = read_block(geometry.work(index), image, geometry, test)
    labels, probs = segment_block(work, plugin.predictor, geometry, task.settings, task.normalize)
    plugin.store(task.store).write_block(work.index, work.core, labels, probs)
    return {
        "index": index,
        "counts": core_counts(work, labels).tolist(),
        "windows": len(work.window_starts),
        "skipped": labels is None,
        "pid": os.getpid(),
    }


def connect(scheduler: str, *, timeout: float = 10.0):
    """A dask Client for ``ADDRESS`` (an existing scheduler) or ``local:N`` (a LocalCluster of N processes).

    With ``local:N`` on a machine with CUDA GPUs, every worker is pinned to one card: dask-cuda's
    LocalCUDACluster when it is installed, else one Nanny per GPU with its own CUDA_VISIBLE_DEVICES.
    """
    from distributed import Client

    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise SchedulerError(f"'{scheduler}': use local:N with N >= 1 worker processes")
        return Client(local_cluster(n))
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise SchedulerError(f"cannot reach the dask scheduler at '{scheduler}' ({err}); nothing was run") from err


def local_cluster(n_workers: int):
    """A local cluster of ``n_workers`` single-threaded worker processes, one per GPU when there are GPUs."""
    import torch
    from distributed import LocalCluster

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster

            return LocalCUDACluster(n_workers=min(n_workers, gpus), threads_per_worker=1)
        except ImportError:
            from distributed import Nanny, Scheduler, SpecCluster

            workers = {
                f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
                for i in range(min(n_workers, gpus))
            }
            return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": str(threads)},
    )


def segment_slide_distributed(
    slide,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    settings: InferenceSettings,
    client,
    *,
    level: int | None = None,
    input_mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
    retries: int = 3,
) -> Generator[InferenceProgress | InferenceResult, None, InferenceResult]:
    """Segment a slide on a dask cluster; events and result as :func:`.jobs.segment_slide`.

    The slide file, the checkpoint and the output store must be reachable under the same paths by every worker
    (a shared filesystem). Closing the generator cancels the blocks not yet finished; finished blocks stay recorded.
    """
    from distributed import as_completed

    from ..model.checkpoint import read_card
    from .jobs import prepare_slide_job

    card = read_card(checkpoint)
    job = prepare_slide_job(
        slide,
        card,
        out,
        settings,
        divisor=card.model_config.divisor,
        level=level,
        input_mpp=input_mpp,
        region=region,
        overwrite=overwrite,
    )
    geometry = BlockGeometry(job.shape, settings, job.plan.factor, job.plan.output_mpp)
    tally = RunTally(job.blocks if job.blocks is not None else all_blocks(geometry), job.store.done_blocks())
    task = BlockTask(
        slide=str(Path(slide.path).resolve()),
        level=job.plan.level,
        store=str(Path(job.store.path).resolve()),
        settings=settings,
        plan=job.plan,
        downsample=job.downsample,
        normalize=job.normalize,
    )
    client.register_plugin(ModelPlugin(str(Path(checkpoint).resolve()), settings), name=PLUGIN_NAME)
    tissue = client.scatter(job.tissue, broadcast=True) if job.tissue is not None else None
    futures = [
        client.submit(
            run_block,
            index,
            task,
            tissue,
            key=f"histoseg-block-{index[0]}-{index[1]}-{id(job)}",
            retries=retries,
            pure=False,
        )
        for index in tally.pending
    ]
    try:
        for future in as_completed(futures):
            done = future.result()  # raises the worker's error, naming the block
            yield tally.add(np.asarray(done["counts"]), done["windows"], done["skipped"])
    finally:
        client.cancel([f for f in futures if not f.done()])
    result = tally.result(job.plan, job.shape)
    result.store = job.store
    if job.blocks is None:
        job.store.finalize(result.summary())
    yield result
    return result
