"""The blockwise engine: same result as whole-image inference, independent of block size, resumable, tissue-aware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_histoseg.analysis.opening import open_labels
from napari_histoseg.engine import device as device_module
from napari_histoseg.engine.infer import InferenceProgress, InferenceResult, InferenceSettings, run, segment
from napari_histoseg.engine.predictor import BlockPredictor
from napari_histoseg.engine.resolution import ResolutionPlan, plan_resolution
from napari_histoseg.engine.tiling import WindowGrid, gaussian_weight
from napari_histoseg.io.store import ArraySink, LabelStore
from napari_histoseg.model.resunetpp import ModelConfig, build_model

PLAN = ResolutionPlan(level=0, factor=1.0, output_mpp=None)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(ModelConfig.scaled(0.25)).eval()
    # Random BatchNorm statistics make the random network's classes vary across the image.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def tissue_image() -> np.ndarray:
    """A 1024 px image with structure at several scales (smooth blobs and texture)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:1024, 0:1000]
    base = 200 - 120 * (np.sin(yy / 37.0) * np.cos(xx / 53.0) > 0.3)
    noise = rng.integers(-25, 25, size=(1024, 1000))
    img = np.stack([base + noise, base * 0.6 + noise, base * 0.9 + noise], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def whole_image_reference(image: np.ndarray, model, tile: int, overlap: float, radius: int) -> np.ndarray:
    """Sliding windows over the whole image in memory, one canvas: what the engine must reproduce."""
    grid = WindowGrid.from_overlap(tile, overlap)
    h, w = image.shape[:2]
    ys, xs = grid.positions(h), grid.positions(w)
    pad_top, pad_left = -int(ys[0]), -int(xs[0])
    ph, pw = int(ys[-1]) + tile + pad_top, int(xs[-1]) + tile + pad_left
    canvas = np.full((ph, pw, 3), 255, np.uint8)
    canvas[pad_top : pad_top + h, pad_left : pad_left + w] = image
    x = torch.from_numpy(canvas).permute(2, 0, 1).float() / 255
    weight = torch.from_numpy(gaussian_weight(tile))
    acc = torch.zeros((4, ph, pw))
    with torch.inference_mode():
        for y in ys:
            for xx in xs:
                y0, x0 = int(y) + pad_top, int(xx) + pad_left
                p = F.softmax(model(x[None, :, y0 : y0 + tile, x0 : x0 + tile]), dim=1)[0]
                acc[:, y0 : y0 + tile, x0 : x0 + tile] += p * weight
    labels = acc[:, pad_top : pad_top + h, pad_left : pad_left + w].argmax(0).to(torch.uint8).numpy()
    return open_labels(labels, radius)


def segment_in_memory(image, model, **kw) -> InferenceResult:
    settings = InferenceSettings(skip_background=False, **kw)
    # fp32, as the reference: these tests are about tiling, not precision (see test_bf16_autocast_...)
    predictor = BlockPredictor(
        model, torch.device("cpu"), tile=settings.tile, batch_size=settings.batch_size, amp=False
    )
    sink = ArraySink(image.shape[:2], probabilities=settings.probabilities)
    return run(segment(image, predictor, sink, settings, PLAN))


def test_tiled_equals_whole_image(tissue_image, model):
    ref = whole_image_reference(tissue_image, model, tile=256, overlap=0.25, radius=2)
    result = segment_in_memory(tissue_image, model, block=256, opening_radius=2)
    assert len(np.unique(ref)) >= 2, "the reference must not be a single class for the test to mean anything"
    agreement = (result.labels == ref).mean()
    assert agreement >= 0.999, agreement
    assert result.class_counts == np.bincount(result.labels.ravel(), minlength=4).tolist()


@pytest.mark.parametrize("block", [512, 768])
def test_independent_of_block_size(tissue_image, model, block):
    image = tissue_image[:800, :900]
    small = segment_in_memory(image, model, block=256, opening_radius=2)
    other = segment_in_memory(image, model, block=block, opening_radius=2)
    assert (small.labels == other.labels).mean() >= 0.9999


def test_progress_events_and_probabilities(tissue_image, model):
    settings = InferenceSettings(block=512, skip_background=False, probabilities=True)
    predictor = BlockPredictor(model, torch.device("cpu"), tile=256)
    events = list(
        segment(tissue_image[:600, :600], predictor, ArraySink((600, 600), probabilities=True), settings, PLAN)
    )
    progress = [e for e in events if isinstance(e, InferenceProgress)]
    assert [p.blocks_done for p in progress] == [1, 2, 3, 4]
    assert all(p.blocks_total == 4 for p in progress)
    assert progress[-1].eta_seconds == 0
    assert progress[-1].windows_per_second > 0
    result = events[-1]
    assert isinstance(result, InferenceResult)
    assert np.allclose(result.probabilities.sum(-1), 1.0, atol=1e-4)
    unopened = result.probabilities.argmax(-1)
    kept = result.labels > 0
    assert (unopened[kept] == result.labels[kept]).mean() > 0.9999  # normalising can create exact ties


def test_bf16_autocast_on_a_bf16_cpu_keeps_the_decisions(monkeypatch, tissue_image, model):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)  # bf16 runs (slowly) on any CPU
    image = torch.from_numpy(tissue_image[:512, :512].copy()).permute(2, 0, 1).float() / 255
    starts = [(0, 0), (0, 256), (256, 0), (256, 256)]
    exact = BlockPredictor(model, torch.device("cpu"), tile=256, amp=False).predict(image, starts)
    mixed = BlockPredictor(model, torch.device("cpu"), tile=256).predict(image, starts)
    assert mixed.dtype == torch.float32 and not torch.equal(mixed, exact)  # bf16 really ran
    agree = (mixed.argmax(0) == exact.argmax(0)).float().mean().item()
    assert agree > 0.97, agree


def test_logit_bias_shifts_the_blended_decision(tissue_image, model):
    image = torch.from_numpy(tissue_image[:256, :256].copy()).permute(2, 0, 1).float() / 255
    plain = BlockPredictor(model, torch.device("cpu"), tile=256).predict(image, [(0, 0)])
    same = BlockPredictor(model, torch.device("cpu"), tile=256, logit_bias=[5.0] * 4).predict(image, [(0, 0)])
    torch.testing.assert_close(plain, same)  # a constant shift changes nothing
    boundary = BlockPredictor(model, torch.device("cpu"), tile=256, logit_bias=[0, 0, 0, 1e4]).predict(image, [(0, 0)])
    assert (boundary.argmax(0) == 3).all()
    with pytest.raises(ValueError, match="logit_bias needs 4"):
        BlockPredictor(model, torch.device("cpu"), tile=256, logit_bias=[1.0])


def test_background_blocks_are_skipped(tissue_image, model):
    settings = InferenceSettings(block=256, opening_radius=1)
    predictor = BlockPredictor(model, torch.device("cpu"), tile=256)

    def tissue(y0, x0, y1, x1):  # tissue only in the top-left 300 px
        return y0 < 300 and x0 < 300

    result = run(segment(tissue_image, predictor, ArraySink(tissue_image.shape[:2]), settings, PLAN, tissue=tissue))
    assert result.blocks_skipped >= 9
    assert (result.labels[600:, :] == 0).all() and (result.labels[:, 600:] == 0).all()
    assert result.windows < 30


def test_store_resume_after_cancel_gives_identical_store(tmp_path, tissue_image, model):
    settings = InferenceSettings(block=256, skip_background=False)
    predictor = BlockPredictor(model, torch.device("cpu"), tile=256)
    image = tissue_image[:768, :768]
    full = LabelStore.create(tmp_path / "full.zarr", image.shape[:2], block=256, settings=settings.result_settings())
    run(segment(image, predictor, full, settings, PLAN))

    store = LabelStore.create(tmp_path / "part.zarr", image.shape[:2], block=256, settings=settings.result_settings())
    gen = segment(image, predictor, store, settings, PLAN)
    for event in gen:
        if isinstance(event, InferenceProgress) and event.blocks_done == 4:
            break
    gen.close()  # Cancel
    reopened = LabelStore.open(tmp_path / "part.zarr")
    assert len(reopened.done_blocks()) == 4
    assert reopened.levels[0][:].shape == (768, 768)  # a valid store, partly background

    resumed = LabelStore.create(tmp_path / "part.zarr", image.shape[:2], block=256, settings=settings.result_settings())
    result = run(segment(image, predictor, resumed, settings, PLAN))
    assert result.blocks_resumed == 4
    for a, b in zip(full.levels, resumed.levels, strict=True):
        np.testing.assert_array_equal(a[:], b[:])
    assert result.class_counts == np.bincount(full.levels[0][:].ravel(), minlength=4).tolist()


def test_resume_with_other_settings_is_refused(tmp_path):
    LabelStore.create(tmp_path / "s.zarr", (512, 512), block=256, settings={"tile": 256})
    with pytest.raises(ValueError, match="other settings"):
        LabelStore.create(tmp_path / "s.zarr", (512, 512), block=256, settings={"tile": 128})


def test_upsampled_resolution_returns_labels_at_input_size(tissue_image, model):
    plan = plan_resolution([0.5], 0.25)
    assert plan.factor == 2.0
    settings = InferenceSettings(block=256, skip_background=False)
    predictor = BlockPredictor(model, torch.device("cpu"), tile=256)
    image = tissue_image[:300, :280]
    one = run(segment(image, predictor, ArraySink(image.shape[:2]), settings, plan))
    assert one.labels.shape == (300, 280)
    bigger = InferenceSettings(block=512, skip_background=False)
    two = run(segment(image, predictor, ArraySink(image.shape[:2]), bigger, plan))
    assert (one.labels == two.labels).mean() >= 0.999


def test_plan_resolution_picks_level():
    assert plan_resolution([0.25, 1.0, 4.0], 0.25).level == 0
    plan = plan_resolution([0.125, 0.25, 1.0], 0.25)
    assert (plan.level, plan.factor) == (1, 1.0)
    plan = plan_resolution([None], 0.25)
    assert plan.warning and plan.factor == 1.0
    assert plan_resolution([None], 0.25, input_mpp=0.5).factor == 2.0
    with pytest.raises(ValueError, match="level 3"):
        plan_resolution([0.25], 0.25, level=3)


def test_window_grid_covers_the_image_with_monai_positions():
    grid = WindowGrid.from_overlap(256, 0.25)
    assert grid.stride == 192
    assert grid.positions(4096).tolist() == [*range(0, 4096 - 256, 192), 4096 - 256]
    assert grid.positions(100).tolist() == [0]  # shorter than a tile: one padded window
    starts = grid.starts(1000, 1200, 4096)
    assert all(s < 1200 and s + 256 > 1000 for s in starts)
    assert set(grid.positions(4096)) - set(starts) == {
        p for p in grid.positions(4096) if not (p < 1200 and p + 256 > 1000)
    }


def test_out_of_memory_retries_with_a_smaller_batch(tissue_image, model):
    class Picky(torch.nn.Module):
        """Raises CUDA's out-of-memory error for batches above 2, as a full GPU would."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.sizes = inner, inner.config, []

        def forward(self, x):
            self.sizes.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    picky = Picky(model)
    image = tissue_image[:512, :512]
    settings = InferenceSettings(block=512, skip_background=False, batch_size=8)
    predictor = BlockPredictor(picky, torch.device("cpu"), tile=256, batch_size=8, amp=False)
    result = run(segment(image, predictor, ArraySink(image.shape[:2]), settings, PLAN))
    assert predictor.batch_size == 2 and picky.sizes[:3] == [8, 4, 2]
    expected = segment_in_memory(image, model, block=512, batch_size=2)
    np.testing.assert_array_equal(result.labels, expected.labels)
