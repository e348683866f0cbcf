"""Shared fixtures: where the real data lives, and the rule that CI must not skip tests that need it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REQUIRE_SHARED_ENV = "HISTOSEG_REQUIRE_SHARED_DATA"


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get(REQUIRE_SHARED_ENV):
            pytest.fail(f"{path} is missing but {REQUIRE_SHARED_ENV} is set (CI must run the real-data tests)")
        pytest.skip(f"real data not found at {path} (a fresh clone without ../shared)")
    return path


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    """Folder of the two real SVS slides."""
    return _shared_path("data", "wsi")


@pytest.fixture(scope="session")
def cmu_svs(wsi_dir: Path) -> Path:
    """CMU-1 small region: Aperio SVS, JPEG, one level, MPP 0.499."""
    return wsi_dir / "cmu-1-small-region.svs"


@pytest.fixture(scope="session")
def tcga_svs(wsi_dir: Path) -> Path:
    """TCGA-CR-7395: Aperio SVS, JPEG2000, two levels, no MPP."""
    return wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="session")
def consep_dir() -> Path:
    """CoNSeP patches in folder-pair format: train/ and val/."""
    return _shared_path("data", "consep")


@pytest.fixture(scope="session")
def brca_dir() -> Path:
    """BRCA-M2C breast carcinoma images with a point per annotated cell: train/ and val/ (about 0.5 um/px)."""
    return _shared_path("data", "brca-m2c")
