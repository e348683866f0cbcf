"""How many network tiles a run will compute, known before it starts (for "tile k of n" and the area it covers).

Uses the engine's own block geometry and window planning, so the count is the number of windows the engine runs:
background windows and blocks that the tissue mask skips are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

from .infer import BlockGeometry, InferenceSettings, TissueTest, all_blocks, plan_windows


def count_tiles(
    shape: tuple[int, int],
    settings: InferenceSettings,
    factor: float = 1.0,
    *,
    tissue: TissueTest | None = None,
    blocks: Iterable[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], int]:
    """Windows the engine runs in each block of an output grid of ``shape`` (blocks without tissue: 0).

    ``factor`` is the resolution plan's (compute pixels per output pixel); ``blocks`` restricts to some blocks.
    """
    geometry = BlockGeometry(shape, settings, factor)
    counts = {}
    for index in all_blocks(geometry) if blocks is None else blocks:
        work = geometry.work(index)
        if tissue is not None and not tissue(*work.need):
            counts[index] = 0
            continue
        plan_windows(work, geometry, tissue)
        counts[index] = len(work.window_starts)
    return counts
