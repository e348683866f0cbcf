"""Screenshots of the Segment and Train widgets in each state a user meets, for the README (docs/widgets/).

    xvfb-run -a python scripts/screenshot_widgets.py [--out docs/widgets] [--data ../shared/data]

States: the Segment form on the sample slide (its resolution from the file); a slide that states no resolution
(TCGA-CR-7395 from the shared data, when present), then its resolution estimated; the Advanced section open; a run
in progress (the bundled model on a 256 px region of the sample slide, one block); the result with its readout
(cellularity first, details open); the current view of the slide segmented into its own layer; the Train widget as
a tab beside Segment, with a loss plot. The dock is 360 px wide, as on a laptop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication
from skimage.io import imsave

from napari_histoseg._napari.segment_widget import SegmentWidget
from napari_histoseg._napari.train_widget import TrainWidget
from napari_histoseg.samples import sample_path

DOCK_PX = 360


def pump(seconds: float = 0.3) -> None:
    """Let Qt (and napari's tile loading) catch up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)


def save(viewer, out: Path, name: str) -> None:
    pump()
    shot = viewer.window.screenshot(flash=False, canvas_only=False)
    imsave(out / name, shot, check_contrast=False)
    print(f"wrote {out / name} ({shot.shape[1]} x {shot.shape[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/widgets"))
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1280, 860)
    [image] = viewer.open(str(sample_path()), plugin="napari-histoseg")
    segment, train = SegmentWidget(viewer), TrainWidget(viewer)
    docks = [
        viewer.window.add_dock_widget(segment, name="Segment tumor cells", area="right"),
        viewer.window.add_dock_widget(train, name="Train / fine-tune", area="right", tabify=True),
    ]
    for dock in docks:
        dock.setFixedWidth(DOCK_PX)
    docks[0].raise_()
    viewer.window.screenshot(flash=False)  # lays the window out
    save(viewer, args.out, "segment-form.png")

    tcga = args.data / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    if tcga.exists():
        [silent] = viewer.open(str(tcga), plugin="napari-histoseg")
        segment.image.value = silent
        save(viewer, args.out, "segment-unknown-resolution.png")
        segment.resolution.estimate.clicked.emit()  # the size model reads it off a few tissue tiles
        while segment.estimator.running:
            pump(0.5)
        save(viewer, args.out, "segment-estimated-resolution.png")
        viewer.layers.remove(silent)
        segment.image.value = image

    segment.advanced.expanded = True
    save(viewer, args.out, "segment-advanced.png")
    segment.advanced.expanded = False

    # A run on a region of the sample slide (one block of 256 px: a few minutes on a busy CPU): progress, result.
    y0, x0, side = 1280, 1024, 256
    far = side - 1  # vertices are pixel centres: the last row and column of the block
    box = [[y0, x0], [y0, x0 + far], [y0 + far, x0 + far], [y0 + far, x0]]
    shapes = viewer.add_shapes([box], scale=image.scale, name="region", edge_color="yellow", face_color="transparent")
    segment.image.value = image
    segment.extent.value = "shapes"
    segment.shapes.value = shapes
    segment.block.value = 256
    segment.new_layer.value = False
    segment.output_dir.value = tempfile.mkdtemp(prefix="histoseg-screenshots-")
    viewer.scene.camera.center = (0, (y0 + side / 2) * image.scale[0], (x0 + side / 2) * image.scale[1])
    viewer.scene.camera.zoom = viewer.canvas.size[0] / (1.6 * side * image.scale[0])
    segment.run_button.clicked.emit()
    deadline = time.monotonic() + 1800
    shot = False
    while (segment.runner.running or segment.measurer.running) and time.monotonic() < deadline:
        pump(0.5)
        bar = segment.progress.bar
        if not shot and "left" in segment.progress.text.value and bar.max and bar.value >= bar.max // 3:
            save(viewer, args.out, "segment-progress.png")
            shot = True
    segment.result.section.expanded = True
    # The result replaced the layer's data: napari picks the pyramid level again on the next draw and loads its
    # tiles after it, so draw once, wait, then take the shot.
    viewer.scene.camera.zoom *= 1.001
    viewer.window.screenshot(flash=False)
    pump(5)
    save(viewer, args.out, "segment-result.png")

    # "Current view" of the slide: the view rounded to whole tiles, segmented into a layer of its own.
    segment.result.section.expanded = False
    segment.extent.value = "current view"
    viewer.layers.remove(shapes)
    viewer.scene.camera.center = (0, 700 * image.scale[0], 1500 * image.scale[1])
    viewer.scene.camera.zoom = viewer.canvas.size[0] / (420 * image.scale[0])
    pump()
    segment.run_button.clicked.emit()
    while (segment.runner.running or segment.measurer.running) and time.monotonic() < deadline:
        pump(0.5)
    viewer.scene.camera.zoom *= 0.7  # step back: the view result sits inside the slide's pixels
    viewer.window.screenshot(flash=False)  # draw once at the new zoom (the first frame can keep stale rows)
    pump(3)
    save(viewer, args.out, "segment-current-view.png")

    docks[1].raise_()
    train.status.value = "epoch 6/20: loss 0.3812, score 0.641 (best 0.641 at epoch 6)"
    for loss, score in [(0.92, 0.41), (0.61, 0.52), (0.50, 0.58), (0.44, 0.60), (0.41, 0.63), (0.38, 0.64)]:
        train.plot.add(loss, score)
    save(viewer, args.out, "train.png")
    viewer.close()


if __name__ == "__main__":
    main()
