"""Folder pairs: discovery, validation, reading, class weights, split; patch datasets and the loader."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_histoseg.classes import CLASS_COLORS
from napari_histoseg.training.class_weights import class_weights
from napari_histoseg.training.image_files import read_image, read_mask
from napari_histoseg.training.pair_folders import DatasetError, Pair, find_pairs, split_by_image
from napari_histoseg.training.patch_datasets import EvalDataset, PatchDataset, make_loader
from napari_histoseg.training.samples import Sample, load_pairs


def _labels(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, (h, w)).astype(np.uint8)


def _write_pair(root: Path, name: str, labels: np.ndarray, image: np.ndarray | None = None, ext: str = "png"):
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    if image is None:
        image = np.full(labels.shape + (3,), 200, np.uint8)
    iio.imwrite(root / "input" / f"{name}.{ext}", image)
    iio.imwrite(root / "gt" / f"{name}_gt.png", CLASS_COLORS[labels])


@pytest.fixture
def good_set(tmp_path: Path) -> Path:
    for i in range(3):
        _write_pair(tmp_path, f"img{i}", _labels(seed=i))
    return tmp_path


# --- discovery ---------------------------------------------------------------------------------------------


def test_find_pairs_lists_sorted_pairs_and_optional_instances(good_set: Path):
    (good_set / "inst").mkdir()
    iio.imwrite(good_set / "inst" / "img1.png", np.arange(256, dtype=np.uint16).reshape(16, 16))
    (good_set / "input" / "notes.txt").write_text("ignored")
    pairs = find_pairs(good_set)
    assert [p.name for p in pairs] == ["img0", "img1", "img2"]
    assert pairs[0].gt == good_set / "gt" / "img0_gt.png"
    assert pairs[0].inst is None and pairs[1].inst == good_set / "inst" / "img1.png"


def test_missing_and_extra_gt_are_reported_together(good_set: Path):
    (good_set / "gt" / "img1_gt.png").unlink()
    iio.imwrite(good_set / "gt" / "orphan_gt.png", CLASS_COLORS[_labels()])
    with pytest.raises(DatasetError) as info:
        find_pairs(good_set)
    assert len(info.value.problems) == 2
    message = str(info.value)
    assert "img1.png" in message and "no ground truth" in message
    assert "orphan_gt.png" in message and "without an input image" in message


def test_missing_folder_and_duplicate_names(tmp_path: Path):
    (tmp_path / "input").mkdir()
    with pytest.raises(DatasetError, match="missing folder.*gt"):
        find_pairs(tmp_path)
    _write_pair(tmp_path, "a", _labels())
    iio.imwrite(tmp_path / "input" / "a.jpg", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match="duplicate image name 'a'"):
        find_pairs(tmp_path)


def test_gt_without_suffix_is_an_error(good_set: Path):
    iio.imwrite(good_set / "gt" / "img0.png", CLASS_COLORS[_labels()])
    with pytest.raises(DatasetError, match=r"img0\.png: ground-truth files must be named"):
        find_pairs(good_set)


# --- reading -----------------------------------------------------------------------------------------------


def test_read_image_rgba_grey_and_16bit(tmp_path: Path):
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 0
    iio.imwrite(tmp_path / "rgba.png", rgba)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and (out[..., 0] == 10).all()

    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    iio.imwrite(tmp_path / "grey.png", grey)
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (5, 6, 3) and all((out[..., c] == grey).all() for c in range(3))

    import tifffile

    tifffile.imwrite(tmp_path / "deep.tif", np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16))
    out = read_image(tmp_path / "deep.tif")
    assert out[..., 0].tolist() == [[0, 255], [100, 200]]


def test_unreadable_image_names_the_file(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match=r"absent\.png: file not found"):
        read_image(tmp_path / "absent.png")


def test_read_mask_snaps_noise_and_counts_it(tmp_path: Path):
    labels = _labels(20, 20)
    rgb = CLASS_COLORS[labels].astype(np.int16)
    noise = np.zeros_like(rgb)
    noise[:5] = 40  # 100 pixels, each channel moved by up to 40
    noisy = np.clip(rgb + np.where(rgb > 0, -noise, noise), 0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "m_gt.png", noisy)
    out, snapped = read_mask(tmp_path / "m_gt.png")
    assert np.array_equal(out, labels)
    assert snapped == 100


def test_wrong_colour_names_file_colour_and_count(tmp_path: Path):
    rgb = CLASS_COLORS[_labels(10, 10)]
    rgb[0, :7] = [255, 255, 0]  # yellow, 7 px
    rgb[1, :3] = [128, 128, 128]  # grey, 3 px
    iio.imwrite(tmp_path / "bad_gt.png", rgb)
    with pytest.raises(DatasetError) as info:
        read_mask(tmp_path / "bad_gt.png")
    message = str(info.value)
    assert "bad_gt.png" in message and "10 pixel(s)" in message
    assert "[255, 255, 0] (7 px)" in message and "[128, 128, 128] (3 px)" in message
    assert message.index("[255, 255, 0]") < message.index("[128, 128, 128]")  # most frequent first
    assert "JPEG" not in message
    # A stricter tolerance rejects what the default snaps.
    noisy = CLASS_COLORS[_labels(4, 4)].copy()
    noisy[0, 0] = [30, 0, 0]
    iio.imwrite(tmp_path / "n_gt.png", noisy)
    assert read_mask(tmp_path / "n_gt.png")[1] == 1
    with pytest.raises(DatasetError, match=r"\[30, 0, 0\] \(1 px\)"):
        read_mask(tmp_path / "n_gt.png", tolerance=10)


def test_jpeg_saved_mask_is_rejected_with_a_hint(tmp_path: Path):
    labels = np.kron(_labels(8, 8), np.ones((4, 4), np.uint8))
    iio.imwrite(tmp_path / "j_gt.png", iio.imread(iio.imwrite("<bytes>", CLASS_COLORS[labels], extension=".jpg")))
    with pytest.raises(DatasetError, match="more colour.*lossy compression such as JPEG"):
        read_mask(tmp_path / "j_gt.png")


def test_load_pairs_validates_everything_before_returning(good_set: Path):
    iio.imwrite(good_set / "gt" / "img0_gt.png", CLASS_COLORS[_labels(12, 16)])  # size mismatch
    (good_set / "input" / "img1.png").write_bytes(b"garbage")  # unreadable
    rgb = CLASS_COLORS[_labels()]
    rgb[3, 3] = [255, 255, 255]
    iio.imwrite(good_set / "gt" / "img2_gt.png", rgb)  # wrong colour
    with pytest.raises(DatasetError) as info:
        load_pairs(find_pairs(good_set))
    problems = info.value.problems
    assert len(problems) == 3
    assert any("img0_gt.png" in p and "16x12" in p and "16x16" in p for p in problems)
    assert any("img1.png" in p and "cannot read" in p for p in problems)
    assert any("img2_gt.png" in p and "[255, 255, 255] (1 px)" in p for p in problems)


def test_load_pairs_report_and_instances(good_set: Path):
    (good_set / "inst").mkdir()
    inst = np.zeros((16, 16), np.uint16)
    inst[2:5, 2:5] = 300
    iio.imwrite(good_set / "inst" / "img2.png", inst)
    samples, report = load_pairs(find_pairs(good_set))
    assert [s.name for s in samples] == ["img0", "img1", "img2"]
    expected = sum(np.bincount(_labels(seed=i).ravel(), minlength=4) for i in range(3))
    assert report == {"images": 3, "snapped_pixels": 0, "pixels_per_class": expected.tolist()}
    assert samples[0].inst is None and samples[2].inst.dtype == np.int32 and samples[2].inst.max() == 300
    assert samples[1].image.shape == (16, 16, 3) and np.array_equal(samples[1].labels, _labels(seed=1))

    iio.imwrite(good_set / "inst" / "img2.png", np.zeros((8, 8), np.uint16))
    with pytest.raises(DatasetError, match=r"img2\.png: size 8x8 does not match"):
        load_pairs(find_pairs(good_set))


# --- class weights -----------------------------------------------------------------------------------------


def test_class_weights_exact_on_hand_made_set():
    a = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 2, 2, 3]], np.uint8)  # counts 6, 3, 2, 1 over N = 12
    weights = class_weights([a[:1], a[1:]])
    assert weights.dtype == np.float32
    assert weights.tolist() == [2.0, 4.0, 6.0, 12.0]


def test_absent_class_warns_and_gets_a_finite_weight():
    labels = np.array([[0, 0, 0, 1]], np.uint8)  # N = 4, classes 2 and 3 absent
    with pytest.warns(UserWarning) as record:
        weights = class_weights([labels])
    messages = " ".join(str(w.message) for w in record)
    assert "non-tumor cell" in messages and "cell boundary" in messages and len(record) == 2
    assert np.isfinite(weights).all()
    assert weights.tolist() == pytest.approx([4 / 3, 4.0, 4.0, 4.0])


# --- split -------------------------------------------------------------------------------------------------


def _pairs(names):
    return [Pair(n, Path(f"input/{n}.png"), Path(f"gt/{n}_gt.png")) for n in names]


def test_split_by_image_holds_out_whole_images_reproducibly():
    pairs = _pairs([f"p{i}" for i in range(10)])
    train, val = split_by_image(pairs, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert {p.name for p in train}.isdisjoint({p.name for p in val})
    assert sorted(p.name for p in train + val) == sorted(p.name for p in pairs)
    assert split_by_image(pairs, 0.2, seed=1) == (train, val)
    assert any(split_by_image(pairs, 0.2, seed=s)[1] != val for s in range(2, 6))
    # At least one image on each side, whatever the fraction.
    assert len(split_by_image(pairs, 0.01, seed=0)[1]) == 1
    assert len(split_by_image(pairs, 0.99, seed=0)[0]) == 1


def test_split_by_image_keeps_groups_together_and_rejects_impossible_splits():
    names = [f"tile{t}_{k}" for t in range(4) for k in range(3)]
    train, val = split_by_image(_pairs(names), 0.25, seed=0, group_of=lambda n: n.split("_")[0])
    tiles_train = {p.name.split("_")[0] for p in train}
    tiles_val = {p.name.split("_")[0] for p in val}
    assert len(tiles_val) == 1 and tiles_train.isdisjoint(tiles_val) and len(val) == 3
    with pytest.raises(DatasetError, match="need at least 2"):
        split_by_image(_pairs(["only"]), 0.2, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        split_by_image(_pairs(["a", "b"]), 1.0, seed=0)


# --- datasets ----------------------------------------------------------------------------------------------


def _samples(sizes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        labels = rng.integers(0, 4, (h, w)).astype(np.uint8)
        out.append(Sample(f"s{i}", CLASS_COLORS[labels].copy(), labels, None))
    return out


def test_patch_dataset_items_shapes_and_alignment():
    samples = _samples([(40, 70), (64, 64)])
    ds = PatchDataset(samples, patch=32, augment=False)
    assert len(ds) == 2 * 3 + 2 * 2  # ceil(40/32)*ceil(70/32) + 2*2 slots
    image, labels = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert labels.shape == (32, 32) and labels.dtype == torch.int64
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # Without augmentation the patch is an exact crop: colours still encode the labels.
    colours = torch.from_numpy(CLASS_COLORS.astype(np.float32) / 255)[labels].permute(2, 0, 1)
    assert torch.allclose(image, colours)


def test_patch_dataset_pads_small_images_white_with_background_labels():
    samples = _samples([(10, 20)])
    samples[0].labels[:] = 1
    ds = PatchDataset(samples, patch=32, augment=False)
    image, labels = ds[0]
    assert (labels[:10, :20] == 1).all() and (labels[10:] == 0).all() and (labels[:, 20:] == 0).all()
    assert (image[:, 10:] == 1.0).all() and (image[:, :, 20:] == 1.0).all()
    image, labels = PatchDataset(samples, patch=32, augment=True, seed=3)[0]
    assert image.shape == (3, 32, 32) and set(labels.unique().tolist()) <= {0, 1}


def test_patch_dataset_is_deterministic_per_seed_epoch_and_index():
    samples = _samples([(64, 64), (48, 80)])
    a = PatchDataset(samples, patch=32, seed=5, stain_jitter=0.05)
    b = PatchDataset(samples, patch=32, seed=5, stain_jitter=0.05)
    for index in (0, 3):
        assert all(torch.equal(x, y) for x, y in zip(a[index], b[index], strict=True))
    first = a[1][0]
    a.set_epoch(1)
    assert not torch.equal(a[1][0], first)
    a.set_epoch(0)
    assert torch.equal(a[1][0], first)
    assert not torch.equal(PatchDataset(samples, patch=32, seed=6, stain_jitter=0.05)[1][0], first)
    with pytest.raises(ValueError, match="multiple of 8"):
        PatchDataset(samples, patch=30)


def test_loader_batches_do_not_depend_on_worker_count():
    samples = _samples([(64, 64), (64, 96), (40, 40)])
    ds = PatchDataset(samples, patch=32, seed=2, samples_per_epoch=12)

    def epochs(num_workers):
        loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=num_workers, seed=9)
        out = []
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            out.append(torch.cat([labels for _, labels in loader]))
        return out

    serial, parallel = epochs(0), epochs(2)
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    assert not torch.equal(serial[0], serial[1])
    assert serial[0].shape == (12, 32, 32)


def test_eval_dataset_pads_to_multiple_of_8_and_keeps_size():
    samples = _samples([(30, 45)])
    samples[0].inst = np.arange(30 * 45, dtype=np.int32).reshape(30, 45)
    image, labels, inst, size, name = EvalDataset(samples)[0]
    assert image.shape == (3, 32, 48) and labels.shape == (32, 48) and inst.shape == (32, 48)
    assert size == (30, 45) and name == "s0"
    assert torch.equal(labels[:30, :45], torch.from_numpy(samples[0].labels.astype(np.int64)))
    assert (labels[30:] == 0).all() and (inst[:, 45:] == 0).all()
    samples[0].inst = None
    assert EvalDataset(samples)[0][2].numel() == 0


# --- real data ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_consep_val_loads_completely(consep_dir: Path):
    pairs = find_pairs(consep_dir / "val")
    assert len(pairs) == 80 and all(p.inst is not None for p in pairs)
    samples, report = load_pairs(pairs)
    assert report["images"] == 80
    counts = np.array(report["pixels_per_class"])
    assert counts.sum() == 80 * 256 * 256 and (counts > 0).all()
    assert all(s.image.shape == (256, 256, 3) and s.inst.shape == (256, 256) for s in samples)
    assert sum(len(np.unique(s.inst)) - 1 for s in samples) > 3000  # 3337 nuclei in the val patches
