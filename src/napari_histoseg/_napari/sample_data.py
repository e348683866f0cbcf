"""Sample data: the CC0 CMU-1 small-region H&E slide shipped inside the package."""

from __future__ import annotations

from napari_histoseg._napari.reader import LayerData, slide_layer_data
from napari_histoseg.io.slide import open_slide
from napari_histoseg.samples import SAMPLE_FILE, sample_path

__all__ = ["SAMPLE_FILE", "cmu1_small_region", "sample_path"]


def cmu1_small_region() -> list[LayerData]:
    """CMU-1 small region (Aperio SVS, H&E, 20x, 0.499 um/px), opened through the same code as the reader."""
    return slide_layer_data(open_slide(sample_path()))
