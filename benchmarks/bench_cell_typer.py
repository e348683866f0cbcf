"""What the cell typer costs: segmenting a region of the bundled sample slide with and without ``cell_typer``.

    python benchmarks/bench_cell_typer.py [--size 1024] [--repeats 3]

Same image, same model, same precision (the engine's default), the two settings alternated; prints each run's
seconds, the median, min-max spread, the ratio, and the cells typed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from napari_histoseg.analysis.instances import cell_rules, cells_from_labels
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.io.slide import open_slide
from napari_histoseg.samples import sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open_slide(sample_path()) as slide:
        mpp = slide.mpp[0]
        image = np.asarray(slide.levels[0][800 : 800 + args.size, 600 : 600 + args.size])[..., :3]
    model, card = load_model(None)
    times: dict[bool, list[float]] = {False: [], True: []}
    cells = 0
    for _ in range(args.repeats):
        for typer in (False, True):
            t0 = time.perf_counter()
            labels = run(segment_image(image, model, card, InferenceSettings(cell_typer=typer), mpp=mpp)).labels
            times[typer].append(time.perf_counter() - t0)
            cells = len(cells_from_labels(labels, **cell_rules(mpp))[1]) - 1
    for typer, runs in times.items():
        print(
            f"cell typer {'on ' if typer else 'off'}: median {statistics.median(runs):.2f} s "
            f"(min {min(runs):.2f}, max {max(runs):.2f}; runs {', '.join(f'{t:.2f}' for t in runs)})"
        )
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"{args.size} px at {mpp} um/px, {cells} cells: ratio {on / off:.2f}x, "
        f"{on - off:.2f} s more, {1000 * (on - off) / max(cells, 1):.2f} s per 1000 cells"
    )


if __name__ == "__main__":
    main()
