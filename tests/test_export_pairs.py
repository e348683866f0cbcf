"""Saving an image + labels as a training folder pair that the training data reader accepts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoseg.export_pairs import PairExportError, labelled_box, safe_name, save_pair, unique_name
from napari_histoseg.training.image_files import read_image, read_mask
from napari_histoseg.training.pair_folders import find_pairs


def _pair(h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[5:15, 6:20] = 1
    labels[20:30, 30:50] = 2
    labels[14, 6:20] = 3
    return image, labels


def test_saved_pair_reads_back_exactly(tmp_path) -> None:
    image, labels = _pair()
    input_path, gt_path = save_pair(image, labels, tmp_path, "slide A/1")
    assert input_path == tmp_path / "input" / "slide_A_1.png"
    assert gt_path == tmp_path / "gt" / "slide_A_1_gt.png"
    [pair] = find_pairs(tmp_path)
    np.testing.assert_array_equal(read_image(pair.image), image)
    decoded, snapped = read_mask(pair.gt)
    np.testing.assert_array_equal(decoded, labels)
    assert snapped == 0


def test_rgba_and_float_images_are_converted(tmp_path) -> None:
    image, labels = _pair()
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    input_path, _ = save_pair(rgba.astype(np.float32) / 255.0, labels, tmp_path, "f")
    np.testing.assert_array_equal(read_image(input_path), image)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.full((40, 56), 5, np.uint8), r"values \[5\] outside the classes"),
        (np.zeros((40, 56), np.uint8), "all background"),
        (np.ones((40, 50), np.uint8), "differ in size"),
        (np.ones((40, 56), np.float32), "integer array"),
    ],
)
def test_bad_labels_are_refused_naming_the_pair(tmp_path, labels, message) -> None:
    image, _ = _pair()
    with pytest.raises(PairExportError, match=message) as info:
        save_pair(image, labels, tmp_path, "bad")
    assert "bad" in str(info.value)
    assert not (tmp_path / "input").exists()


def test_existing_pair_needs_overwrite_or_a_unique_name(tmp_path) -> None:
    image, labels = _pair()
    save_pair(image, labels, tmp_path, "p")
    with pytest.raises(PairExportError, match="already exist"):
        save_pair(image, labels, tmp_path, "p")
    save_pair(image, labels, tmp_path, "p", overwrite=True)
    assert unique_name(tmp_path, "p") == "p_2"
    save_pair(image, labels, tmp_path, unique_name(tmp_path, "p"))
    assert [p.name for p in find_pairs(tmp_path)] == ["p", "p_2"]


def test_labelled_box_and_safe_name() -> None:
    _, labels = _pair()
    assert labelled_box(labels) == (5, 6, 30, 50)
    assert labelled_box(labels, margin=10) == (0, 0, 40, 56)
    assert labelled_box(np.zeros((4, 4), np.uint8)) is None
    assert safe_name("a b/c.svs") == "a_b_c.svs"
    assert safe_name("///") == "pair"
