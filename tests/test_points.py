"""Point-labelled folders: discovery, validation (every problem at once), spec, sites."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from _trainsets import write_point_set
from napari_histoseg.training.pair_folders import DatasetError
from napari_histoseg.training.points import (
    find_point_files,
    is_point_set,
    load_point_samples,
    read_points,
    read_spec,
    site_of,
)


def test_finds_and_reads_a_point_set(tmp_path):
    root = write_point_set(tmp_path / "set", n=2, metadata={"mpp": 0.5, "tumor_classes": [2]})
    assert is_point_set(root) and not is_point_set(tmp_path)
    files = find_point_files(root)
    assert [f.name for f in files] == ["TCGA-A1-X-000", "TCGA-A1-X-001"]
    spec = read_spec(root)
    assert spec.mpp == 0.5 and spec.tumor_classes == (2,)
    samples = load_point_samples(files, spec)
    assert samples[0].image.shape == (64, 64, 3)
    assert len(samples[0].points) == len(samples[0].classes) > 0
    assert set(samples[0].is_tumor(spec)) <= {True, False}
    assert (samples[0].is_tumor(spec) == (samples[0].classes == 2)).all()


def test_options_override_the_metadata_and_tumor_classes_are_required(tmp_path):
    root = write_point_set(tmp_path / "set", n=1, metadata={"mpp": 0.5, "tumor_classes": [2]})
    assert read_spec(root, mpp=0.25, tumor_classes=[1, 2]).tumor_classes == (1, 2)
    assert read_spec(root, mpp=0.25).mpp == 0.25
    bare = write_point_set(tmp_path / "bare", n=1)
    with pytest.raises(DatasetError, match="tumor-classes"):
        read_spec(bare)
    (bare / "points.json").write_text(json.dumps({"mpp": -1, "tumor_classes": [2]}))
    with pytest.raises(DatasetError, match="points.json: mpp must be a positive number"):
        read_spec(bare)
    (bare / "points.json").write_text("{not json")
    with pytest.raises(DatasetError, match="points.json: not readable JSON"):
        read_spec(bare)


def test_every_problem_of_a_folder_is_listed_at_once(tmp_path):
    root = write_point_set(tmp_path / "set", n=3)
    (root / "points" / "TCGA-A1-X-000.csv").unlink()
    (root / "points" / "orphan.csv").write_text("y,x,class\n1,1,1\n")
    with pytest.raises(DatasetError) as info:
        find_point_files(root)
    message = str(info.value)
    assert "2 problems" in message
    assert "TCGA-A1-X-000.png: no points" in message and "orphan.csv: points without an input image" in message


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("y,x,class\n1,2,1\n3,x,1\n4,5\n70,3,2\nnan,1,1\n")
    with pytest.raises(DatasetError) as info:
        read_points(path, shape=(64, 64))
    message = str(info.value)
    assert f"{path}:3: not numbers" in message
    assert f"{path}:4: expected 3 fields" in message
    assert f"{path}:5: point (70, 3) lies outside the 64x64 image" in message
    assert f"{path}:6: coordinates must be finite" in message
    path.write_text("row,col,type\n1,2,1\n")
    with pytest.raises(DatasetError, match="header y,x,class"):
        read_points(path)
    path.write_text("y,x,class\n1.5,2,3\n\n")
    points, classes = read_points(path)
    assert points.tolist() == [[1.5, 2.0]] and classes.tolist() == [3]


def test_problems_of_several_files_are_collected_and_sites_can_be_left_out(tmp_path):
    root = write_point_set(tmp_path / "set", n=2, metadata={"tumor_classes": [2]})
    (root / "points" / "TCGA-A1-X-000.csv").write_text("y,x,class\n999,1,1\n")
    (root / "input" / "TCGA-A1-X-001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError) as info:
        load_point_samples(find_point_files(root), read_spec(root))
    assert len(info.value.problems) == 2
    other = write_point_set(tmp_path / "other", n=1, prefix="TCGA-B2-Y", metadata={"tumor_classes": [2]})
    with pytest.raises(DatasetError, match="no point-labelled images left"):
        load_point_samples(find_point_files(other), read_spec(other), exclude_sites=["b2"])
    assert len(load_point_samples(find_point_files(other), read_spec(other), only_sites=["B2"])) == 1
    with pytest.raises(DatasetError, match="keeping only sites"):
        load_point_samples(find_point_files(other), read_spec(other), only_sites=["A7"])


def test_site_of_names():
    assert site_of("TCGA-A7-A0D9-01Z-00-DX2_18001_13001_1000_1000_0.9824") == "A7"
    assert site_of("slide_01") == "?"


def test_a_grey_image_is_read_as_rgb(tmp_path):
    root = write_point_set(tmp_path / "set", n=1, metadata={"tumor_classes": [2]})
    iio.imwrite(root / "input" / "TCGA-A1-X-000.png", np.full((64, 64), 200, np.uint8))
    sample = load_point_samples(find_point_files(root), read_spec(root))[0]
    assert sample.image.shape == (64, 64, 3)
