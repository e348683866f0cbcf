"""The engine on dask.distributed: same output as one process, survives a killed worker, clear errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_histoseg.engine.distributed import SchedulerError, connect, segment_slide_distributed
from napari_histoseg.engine.infer import InferenceProgress, InferenceSettings, run
from napari_histoseg.engine.jobs import segment_slide
from napari_histoseg.io.slide import open_slide
from napari_histoseg.io.store import LabelStore
from napari_histoseg.model.checkpoint import card_for, load_checkpoint, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model

SETTINGS = InferenceSettings(block=256, skip_background=False, opening_radius=1, batch_size=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(4, 8), bridge=8, aspp_rates=(2,)))
    # With training colours on the card, the workers must apply the driver's stain normaliser like one process does.
    stain = {"method": "reinhard", "lab_mean": [69.0, 24.0, -19.6], "lab_std": [14.7, 8.8, 10.7]}
    card = card_for(model, mpp=0.5, stain_target=stain)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, card)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("slide") / "noise.tif"
    tifffile.imwrite(
        path, image, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    return path


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, slide_path, checkpoint) -> np.ndarray:
    model, card = load_checkpoint(checkpoint)
    out = tmp_path_factory.mktemp("single") / "labels.zarr"
    with open_slide(slide_path) as slide:
        run(segment_slide(slide, model, card, out, SETTINGS))
    return LabelStore.open(out).levels[0][:]


@pytest.fixture(scope="module")
def client():
    client = connect("local:2")
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.mark.slow
def test_local_cluster_output_identical(tmp_path, slide_path, checkpoint, single_process, client):
    out = tmp_path / "dist.zarr"
    with open_slide(slide_path) as slide:
        result = run(segment_slide_distributed(slide, checkpoint, out, SETTINGS, client))
    assert result.blocks_total == 16
    store = LabelStore.open(out)
    np.testing.assert_array_equal(store.levels[0][:], single_process)
    assert len(store.done_blocks()) == 16 and store.info["complete"]
    assert store.info["stain"]["target"]["lab_mean"] == [69.0, 24.0, -19.6]
    assert result.class_counts == np.bincount(single_process.ravel(), minlength=4).tolist()


@pytest.mark.slow
def test_killed_worker_blocks_are_retried(tmp_path, slide_path, checkpoint, single_process, client):
    out = tmp_path / "killed.zarr"
    killed = None
    with open_slide(slide_path) as slide:
        for event in segment_slide_distributed(slide, checkpoint, out, SETTINGS, client):
            if isinstance(event, InferenceProgress) and killed is None:
                assert event.blocks_done < event.blocks_total  # blocks are still queued on the worker we kill
                killed = list(client.run(os.getpid).values())[0]
                os.kill(killed, signal.SIGKILL)
    assert killed is not None
    assert killed not in client.run(os.getpid).values()  # the worker really died (its nanny started another)
    np.testing.assert_array_equal(LabelStore.open(out).levels[0][:], single_process)


@pytest.mark.slow
def test_tissue_mask_is_read_by_the_driver_not_the_cluster(tmp_path, slide_path, checkpoint, client):
    """With tissue skipping (the default), the thumbnail is read locally even though a client is active: its dask
    graph holds the open slide file, which cannot be shipped to workers."""
    settings = InferenceSettings(block=256, skip_background=True, opening_radius=1, batch_size=4)
    model, card = load_checkpoint(checkpoint)
    with open_slide(slide_path) as slide:
        run(segment_slide(slide, model, card, tmp_path / "one.zarr", settings))
        run(segment_slide_distributed(slide, checkpoint, tmp_path / "dist.zarr", settings, client))
    one, dist = LabelStore.open(tmp_path / "one.zarr"), LabelStore.open(tmp_path / "dist.zarr")
    np.testing.assert_array_equal(dist.levels[0][:], one.levels[0][:])


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(SchedulerError, match="cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"):
        connect("tcp://127.0.0.1:9", timeout=2)
    with pytest.raises(SchedulerError, match="local:N"):
        connect("local:zero")


@pytest.mark.slow
def test_cli_predict_with_local_scheduler(tmp_path, slide_path, checkpoint, single_process, capsys):
    from napari_histoseg.cli import main

    out = tmp_path / "cli.zarr"
    args = ["predict", str(slide_path), "--out", str(out), "--model", str(checkpoint), "--block", "256"]
    args += ["--opening-radius", "1", "--batch-size", "4", "--no-tissue-skip", "--scheduler", "local:2", "--json"]
    assert main(args) == 0
    np.testing.assert_array_equal(LabelStore.open(out).levels[0][:], single_process)
    assert main([*args[:-3], "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the dask scheduler" in capsys.readouterr().err
