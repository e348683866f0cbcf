"""Kept for callers written before the move: the tissue mask lives in :mod:`napari_histoseg.analysis.tissue`.

IO reads and writes files and analyses nothing; delete this module once ``engine/jobs.py``, ``jobs/segment.py``
and ``_napari/run_plan.py`` import from ``analysis.tissue`` (the import contract in pyproject.toml checks it).
"""

from __future__ import annotations

from ..analysis.tissue import image_stain_stats, mask_from_rgb, slide_thumbnail, tissue_fraction, tissue_mask

__all__ = ["image_stain_stats", "mask_from_rgb", "slide_thumbnail", "tissue_fraction", "tissue_mask"]
