"""Segment widget in a real viewer (Xvfb): docking, results on images and slides, colours, cancel, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from _pyramids import real_tissue
from napari_histoseg._napari import layers as L
from napari_histoseg._napari import segment_job
from napari_histoseg._napari.segment_widget import SegmentWidget
from napari_histoseg._napari.settings import CONFIG_ENV, load_settings
from napari_histoseg.io.store import LabelStore
from napari_histoseg.model.checkpoint import card_for, save_checkpoint
from napari_histoseg.model.resunetpp import ModelConfig, build_model

PLUGIN = "napari-histoseg"
WAIT_MS = 90_000  # generous: a busy 2-core machine took longer than 20 s for a slide region


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


def calibrated_tiny_model() -> torch.nn.Module:
    """A tiny random model whose classifier is standardised on real tissue, so that several classes appear."""
    torch.manual_seed(3)
    model = build_model(ModelConfig.scaled(0.25)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.from_numpy(real_tissue(256, 256)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = model(x)
        mean, std = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3))
        model.classifier.weight /= std[:, None, None, None]
        model.classifier.bias.sub_(mean).div_(std)
    return model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Checkpoint of :func:`calibrated_tiny_model` (random weights, model card at 0.5 um/px)."""
    model = calibrated_tiny_model()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, card_for(model, mpp=0.5))


def _widget(viewer, checkpoint, **values) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    widget.registry.add(checkpoint)
    widget.device.value = "cpu"
    widget.opening.value = 0
    if widget.image.value is not None and widget.resolution.value is None:
        widget.resolution.value = 0.5  # test images state none; the tiny model's card says 0.5
    for key, value in values.items():
        getattr(widget, key).value = value
    return widget


def _run(qtbot, widget) -> None:
    widget.run_button.clicked.emit()
    assert widget.runner.running
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)


def _errors(monkeypatch) -> list[str]:
    from napari.utils.notifications import notification_manager

    messages: list[str] = []

    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    return messages


def test_both_widgets_dock_from_the_plugin_menu(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment tumor cells")
    assert isinstance(segment, SegmentWidget)
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    assert train.registry is segment.registry  # a model trained there is listed here


def test_image_layer_gives_coloured_labels_with_its_geometry(make_napari_viewer, qtbot, tiny_checkpoint) -> None:
    viewer = make_napari_viewer()
    tissue = real_tissue(256, 320)
    image = viewer.add_image(tissue, rgb=True, name="crop", scale=(0.5, 0.5), translate=(10, 20))
    widget = _widget(viewer, tiny_checkpoint, tile=128, batch_size=4)
    assert widget.image.value is image
    _run(qtbot, widget)

    [labels] = [layer for layer in viewer.layers if layer.name == "crop segmentation"]
    assert labels.data.shape == (256, 320) and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    np.testing.assert_allclose(labels.translate, (10, 20))
    counts = labels.metadata["class_counts"]
    assert sum(counts.values()) == 256 * 320
    assert list(counts.values()) == np.bincount(labels.data.ravel(), minlength=4).tolist()
    present = [c for c in range(1, 4) if (labels.data == c).any()]
    assert len(present) >= 2, f"tiny model predicted only classes {present}"
    assert "tumor cell" in widget.result.text

    # Screenshot: labelled pixels turn pure red/green/blue, background pixels show the tissue unchanged.
    labels.opacity = 1.0
    viewer.window._qt_window.resize(900, 700)
    qtbot.wait(50)
    viewer.reset_view()
    viewer.window.screenshot()  # first, or the canvas-only screenshot comes back black
    labels.visible = False
    off = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    labels.visible = True
    on = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    on_image = off.max(axis=-1) > 0
    total = on_image.sum()
    assert total > 1000
    y0, x0, y1, x1 = L.visible_box(viewer, image)
    assert (y1 - y0) * (x1 - x0) > 0.9 * labels.data.size
    shown_labels = labels.data[y0:y1, x0:x1]
    fractions = np.bincount(shown_labels.ravel(), minlength=4) / shown_labels.size
    for c, colour in ((1, (255, 0, 0)), (2, (0, 255, 0)), (3, (0, 0, 255))):
        shown = (np.abs(on - colour).max(axis=-1) < 40)[on_image].mean()
        assert shown == pytest.approx(fractions[c], abs=0.03), f"class {c}"
    unchanged = (np.abs(on - off).max(axis=-1) < 8)[on_image].mean()
    assert unchanged == pytest.approx(fractions[0], abs=0.05)

    # A rerun replaces the data of the same layer.
    n_layers = len(viewer.layers)
    widget.overlap.value = 0.5
    _run(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert widget.last_layer is labels


@pytest.mark.slow
def test_slide_region_gives_a_lazy_multiscale_layer(make_napari_viewer, qtbot, tiny_checkpoint, cmu_svs, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(cmu_svs), plugin=PLUGIN)
    shapes = viewer.add_shapes(
        [[[1200, 1000], [1200, 1400], [1600, 1400], [1600, 1000]]], scale=image.scale, name="roi"
    )
    widget = _widget(viewer, tiny_checkpoint, tile=128, block=512, output_dir=tmp_path, extent="shapes")
    widget.shapes.value = shapes
    _run(qtbot, widget)

    labels = widget.last_layer
    assert labels.multiscale and labels.name == f"{image.name} segmentation"
    assert [tuple(d.shape) for d in labels.data][0] == (2967, 2220)
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    store = LabelStore.open(labels.metadata["store"])
    assert len(store.done_blocks()) == 4  # the 400 x 400 px box touches 2 x 2 blocks of 512 px
    level0 = np.asarray(labels.data[0][:2048, :2048])
    assert level0[1200:1600, 1000:1400].any() and not level0[:, :512].any() and not level0[:1024].any()
    assert sum(labels.metadata["class_counts"].values()) == 4 * 512 * 512
    assert labels.colormap.map(np.array([0, 1]))[:, 3].tolist() == [0, 1]
    # Segmenting the view next computes the tiles under it only, into a layer of its own placed over the slide;
    # the slide's result (its store and layer) is kept as it was.
    widget.extent.value = "current view"
    viewer.scene.camera.center = (0, 300 * image.scale[0], 300 * image.scale[1])
    viewer.scene.camera.zoom = viewer.canvas.size[0] / (200 * image.scale[0])
    visible = L.visible_box(viewer, image)
    assert "rounded to 128 px tiles" in widget.view_note.value
    _run(qtbot, widget)
    view = widget.last_layer
    assert view is not labels and view.name == f"{image.name} view segmentation" and not view.multiscale
    assert labels in viewer.layers and len(viewer.layers) == 4 and len(store.done_blocks()) == 4
    meta = view.metadata[L.VIEW_KEY]
    oy, ox = meta["origin"]
    h, w = view.data.shape
    assert meta["level"] == 0 and oy % 128 == 0 and ox % 128 == 0 and h % 128 == 0 and w % 128 == 0
    assert oy <= visible[0] < visible[2] <= oy + h and ox <= visible[1] < visible[3] <= ox + w
    assert h < 512 and w < 512  # not the 512 px blocks a store run computes
    np.testing.assert_allclose(view.translate, np.asarray(image.translate) + np.asarray(image.scale) * (oy, ox))
    np.testing.assert_allclose(view.scale, image.scale)
    assert view.data.any() and sum(view.metadata["class_counts"].values()) == h * w
    # A training pair cut from the view layer takes the slide's pixels under it.
    pixels, classes = L.pair_arrays(image, view, (0, 0, 64, 64))
    np.testing.assert_array_equal(pixels, np.asarray(image.data[0][oy : oy + 64, ox : ox + 64]))
    np.testing.assert_array_equal(classes, view.data[:64, :64])


@pytest.mark.slow
def test_cancel_stops_within_a_block_and_keeps_finished_ones(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, tmp_path
) -> None:
    from napari_histoseg._napari.sample_data import cmu1_small_region
    from napari_histoseg.engine import jobs

    def slow_model(checkpoint):  # every network batch takes 0.2 s: a 1024 px block takes seconds
        model, card = jobs.load_model(checkpoint)
        model.register_forward_pre_hook(lambda *_: time.sleep(0.2))
        return model, card

    monkeypatch.setattr(segment_job, "load_model", slow_model)
    viewer = make_napari_viewer()
    [(data, meta, _)] = cmu1_small_region()
    image = viewer.add_image(data, **meta)
    widget = _widget(viewer, tiny_checkpoint, tile=128, block=1024, output_dir=tmp_path, skip_background=False)
    t0 = time.monotonic()
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layer is not None, timeout=WAIT_MS)  # the first block is done
    block_seconds = time.monotonic() - t0
    t1 = time.monotonic()
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert time.monotonic() - t1 < min(2.0, block_seconds / 2), "Cancel waited for the block in hand"

    store = LabelStore.open(widget.last_layer.metadata["store"])
    done = store.done_blocks()
    assert 1 <= len(done) < 9  # 3 x 3 blocks of 1024 px in 2967 x 2220
    assert store.info["complete"] is False
    assert sum(widget.last_layer.metadata["class_counts"].values()) == sum(sum(c) for c in done.values())
    assert "Cancelled" in widget.result.text and widget.run_button.enabled
    assert widget.last_layer.multiscale and np.asarray(widget.last_layer.data[-1]).shape[0] > 0
    # napari still responds, and a rerun resumes after the kept blocks
    viewer.add_points([[10, 10]])
    viewer.layers.selection.active = image
    qtbot.wait(50)
    assert len(viewer.layers) == 3


def test_bad_checkpoint_is_a_notification(make_napari_viewer, qtbot, tmp_path, monkeypatch) -> None:
    messages = _errors(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(64, 64), rgb=True, name="small")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 100)
    widget = _widget(viewer, bad)
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: any("broken" in m for m in messages), timeout=WAIT_MS)
    assert any("Segmentation of small failed" in m for m in messages)
    assert widget.run_button.enabled and not widget.runner.running
    assert all(layer.name == "small" for layer in viewer.layers)


def test_settings_persist_between_widgets(make_napari_viewer, qtbot, tiny_checkpoint) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(64, 64), rgb=True, name="small")
    widget = _widget(viewer, tiny_checkpoint, tile=128, overlap=0.5, batch_size=3)
    _run(qtbot, widget)
    assert load_settings("segment")["tile"] == 128
    again = SegmentWidget(viewer)
    assert (again.tile.value, again.overlap.value, again.batch_size.value) == (128, 0.5, 3)
    assert any(entry.path == tiny_checkpoint for entry in again.registry.entries)


def test_current_view_of_an_image_segments_only_what_is_shown(make_napari_viewer, qtbot, tiny_checkpoint) -> None:
    viewer = make_napari_viewer()
    image = viewer.add_image(real_tissue(256, 256), rgb=True, name="tissue")
    viewer.window._qt_window.resize(900, 700)
    qtbot.wait(50)
    viewer.scene.camera.center = (64, 64)
    viewer.scene.camera.zoom = min(viewer.canvas.size) / 100  # about 100 px of the image across the short side
    box = L.visible_box(viewer, image)
    assert box[0] < 64 < box[2] and box[2] < 200 and box[3] < 256
    widget = _widget(viewer, tiny_checkpoint, tile=64, extent="current view")
    _run(qtbot, widget)
    data = widget.last_layer.data
    assert data.shape == (256, 256)
    y0, x0, y1, x1 = box
    assert data[y0:y1, x0:x1].any()
    assert not data[y1:].any() and not data[:, x1:].any()


def test_unreachable_scheduler_is_a_notification(
    make_napari_viewer, qtbot, tiny_checkpoint, cmu_svs, tmp_path, monkeypatch
):
    messages = _errors(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open(str(cmu_svs), plugin=PLUGIN)
    widget = _widget(viewer, tiny_checkpoint, output_dir=tmp_path, scheduler="tcp://127.0.0.1:9")
    assert widget.request().scheduler == "tcp://127.0.0.1:9"
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: any("cannot reach the dask scheduler" in m for m in messages), timeout=WAIT_MS)
    assert widget.run_button.enabled and len(viewer.layers) == 1


def test_cellularity_readout_of_the_result_and_a_region(make_napari_viewer, qtbot, tiny_checkpoint) -> None:
    from napari_histoseg.analysis.cellularity import cellularity_readout

    viewer = make_napari_viewer()
    image = viewer.add_image(real_tissue(300, 280), rgb=True, name="tissue")
    shapes = viewer.add_shapes([[[20, 20], [20, 150], [150, 150], [150, 20]]], name="roi")
    widget = _widget(viewer, tiny_checkpoint, cellularity_map=True)
    widget.shapes.value = shapes
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.measurer.running, timeout=WAIT_MS)

    labels = widget.last_layer
    expected = cellularity_readout(np.asarray(labels.data), [np.asarray(shapes.data[0])])
    assert labels.metadata["cellularity"]["whole"] == expected["whole"]
    assert labels.metadata["cellularity"]["regions"] == expected["regions"]
    assert expected["whole"]["cells"] > 0  # the calibrated random model does find "cells"
    first, *details = widget.result.text.splitlines()
    whole = expected["whole"]
    cells, tumor = whole["cells"], whole["tumor_cells"]
    assert first == f"Tumor cellularity {100 * tumor / cells:.1f}% ({tumor:,} of {cells:,} cells)"
    assert any(line.startswith("Region 1:") for line in details)
    assert not widget.result.section.native.isHidden() and not widget.result.section.expanded  # behind a toggle
    [cmap] = [layer for layer in viewer.layers if "tumor cellularity" in layer.name]
    assert cmap.colorbar.visible and cmap.data.shape == (2, 2)  # 300 x 280 px in squares of 256 px
    np.testing.assert_allclose(cmap.scale, np.asarray(image.scale) * 256)


def test_stain_normalisation_checkbox_maps_colours_before_the_model(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
) -> None:
    """With a model that records its training colours, the checkbox decides whether the model sees them."""
    model = calibrated_tiny_model()
    card = card_for(model, mpp=0.5, stain_target={"method": "reinhard", "lab_mean": [80, 5, -5], "lab_std": [5, 3, 3]})
    checkpoint = save_checkpoint(tmp_path / "stained", model, card)
    seen: list[float] = []
    real_load = segment_job.load_model

    def load_and_watch(path):
        net, c = real_load(path)
        net.register_forward_pre_hook(lambda _m, args: seen.append(float(args[0].mean())))
        return net, c

    monkeypatch.setattr(segment_job, "load_model", load_and_watch)
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(128, 128, y=700, x=1000), rgb=True, name="tissue")  # nuclei and stroma
    widget = _widget(viewer, checkpoint, tile=128)
    assert widget.stain_normalize.value is True  # on by default
    _run(qtbot, widget)
    normalised, seen[:] = list(seen), []
    widget.stain_normalize.value = False
    assert widget.request().settings.stain_normalize is False
    _run(qtbot, widget)
    # The target is much lighter (L 80) than the tissue: normalised inputs are brighter.
    assert min(normalised) > max(seen) + 0.05
    assert load_settings("segment")["stain_normalize"] is False


def test_test_time_flips_checkbox_runs_four_flips_per_window(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
) -> None:
    batches: list[int] = []
    real_load = segment_job.load_model

    def load_and_watch(path):
        net, c = real_load(path)
        net.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0].shape[0])))
        return net, c

    monkeypatch.setattr(segment_job, "load_model", load_and_watch)
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(128, 128, y=700, x=1000), rgb=True, name="tissue")
    widget = _widget(viewer, tiny_checkpoint, tile=128, batch_size=1)
    assert widget.test_time_flips.value is False  # off by default: it costs 4x the time
    _run(qtbot, widget)
    plain, batches[:] = list(batches), []
    widget.test_time_flips.value = True
    assert widget.request().settings.test_time_flips is True
    _run(qtbot, widget)
    assert plain and set(plain) == {1} and set(batches) == {4}  # each window with its three flips
    assert load_settings("segment")["test_time_flips"] is True
    assert viewer.layers[-1].data.max() > 0


def test_cell_typer_choice_retypes_the_cells(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch) -> None:
    from napari_histoseg.engine import jobs
    from napari_histoseg.engine.cell_typer import CellTyper

    calls: list[int] = []
    typer = CellTyper().eval()
    typer.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    monkeypatch.setattr(jobs, "load_cell_typer", lambda: typer)
    viewer = make_napari_viewer()
    viewer.add_image(real_tissue(128, 128, y=700, x=1000), rgb=True, name="tissue")
    widget = _widget(viewer, tiny_checkpoint, tile=128, batch_size=1)
    assert widget.cell_typer.value == "auto"  # on only with the bundled model, which this one is not
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.measurer.running, timeout=WAIT_MS)
    assert not calls
    assert "Cell types: the network's" in widget.result.text  # the readout says whose types these are
    widget.cell_typer.value = "on"
    assert widget.request().settings.cell_typer is True
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.measurer.running, timeout=WAIT_MS)
    assert load_settings("segment")["cell_typer_mode"] == "on"
    assert "Cell types: the cell typer's" in widget.result.text
    labels = viewer.layers[-1].data
    assert ((labels == 1) | (labels == 2)).any() and calls  # cells were found and the typer was asked about them
