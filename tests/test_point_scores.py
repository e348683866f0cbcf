"""Scoring found cells against annotated points: pairing, type F1 without unpaired found cells, cellularity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_histoseg.analysis.point_scores import format_table, pearson_r, score_image, summarize, summarize_by_group


def test_pairs_within_the_radius_and_counts_types():
    cells = np.array([[10, 10], [30, 30], [50, 50], [90, 90]], float)
    classes = np.array([1, 2, 1, 2])
    points = np.array([[11, 10], [30, 33], [50, 58]], float)  # the third is 8 px away
    row = score_image("TCGA-A7-x-1", "A7", cells, classes, points, np.array([True, True, False]), radius=6)
    assert row.matched == 2 and row.cells == 4 and row.points == 3
    # Tumor: one pair right (TP), one tumor point typed non-tumor (FN), one unpaired tumor cell not judged,
    # no unpaired tumor point.
    assert row.tumor_counts == [1, 0, 0, 1, 0, 0]
    assert row.true_cellularity == pytest.approx(2 / 3)
    assert row.reported_cellularity == pytest.approx(0.5)
    assert row.matched_cellularity == pytest.approx(0.5)
    s = summarize([row])
    assert s["detection_precision"] == 0.5 and s["detection_recall"] == pytest.approx(2 / 3)
    assert s["type_f1_tumor"] == pytest.approx(2 * 1 / (2 * 1 + 2 * 1))
    assert s["cellularity_mae"] == pytest.approx(abs(0.5 - 2 / 3))
    # The paper's equation also credits the non-tumor pair typed non-tumor (none here: the one non-tumor point is
    # unpaired) and judges the unpaired found cells: [10, 10] is paired, [50, 50] (tumor) and [90, 90] are not.
    assert row.tumor_counts_paper == [1, 0, 0, 1, 1, 0]
    assert row.non_tumor_counts_paper == [0, 1, 1, 0, 1, 1]
    assert s["type_f1_tumor_paper"] == pytest.approx(2 * 1 / (2 * 1 + 2 * 1 + 1))


def test_paper_equation_counts_right_pairs_of_the_other_type():
    # Four pairs: 2 tumor points typed tumor, 1 typed non-tumor, 1 non-tumor point typed non-tumor; one found tumor
    # cell with no point; one tumor point with no cell.
    cells = np.array([[0, 0], [0, 20], [0, 40], [0, 60], [40, 0]], float)
    points = np.array([[0, 0], [0, 20], [0, 40], [0, 60], [80, 80]], float)
    row = score_image("x", "A", cells, np.array([1, 1, 2, 2, 1]), points, np.array([1, 1, 1, 0, 1], bool), 3)
    assert row.tumor_counts == [2, 0, 0, 1, 0, 1]
    assert row.tumor_counts_paper == [2, 1, 0, 1, 1, 1]
    s = summarize([row])
    assert s["type_f1_tumor"] == pytest.approx(4 / (4 + 2 + 1))
    assert s["type_f1_tumor_paper"] == pytest.approx(6 / (6 + 2 + 1 + 1))


def test_groups_and_correlation():
    rows = []
    rng = np.random.default_rng(0)
    for i, truth in enumerate([0.1, 0.4, 0.7, 0.9]):
        n = 20
        points = rng.uniform(0, 200, (n, 2))
        tumor = np.arange(n) < round(truth * n)
        rows.append(score_image(f"img{i}", "A" if i < 2 else "B", points, np.where(tumor, 1, 2), points, tumor, 3))
    by_group = summarize_by_group(rows)
    assert list(by_group) == ["all", "A", "B"]
    assert by_group["all"]["cellularity_mae"] == 0 and by_group["all"]["cellularity_r"] == pytest.approx(1)
    assert by_group["all"]["type_f1_tumor"] == 1 and by_group["A"]["images"] == 2
    assert math.isnan(by_group["A"]["cellularity_r"])  # two images: no correlation
    table = format_table(by_group)
    assert table.splitlines()[0].startswith("site") and "nan" in table


def test_pearson_r_drops_undefined_values():
    assert pearson_r([1, 2, 3, float("nan")], [2, 4, 6, 1]) == pytest.approx(1)
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
