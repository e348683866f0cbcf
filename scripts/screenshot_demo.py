"""Screenshot of the plugin at work: the sample slide and the result of ``histoseg demo`` in a real napari viewer.

    histoseg demo --out histoseg-demo
    xvfb-run -a python scripts/screenshot_demo.py histoseg-demo docs/demo.png

Opens the sample slide through the plugin's reader, docks the Segment widget, shows the demo's label store as
the widget does (coloured Labels layer, multiscale, aligned), fills the widget's readout as a finished run does
(the tumor cellularity of the layer first, `cellularity.layer_readout`, then its details) and saves a window
screenshot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from skimage.io import imsave

from napari_histoseg._napari import layers as L
from napari_histoseg._napari.cellularity import layer_readout
from napari_histoseg._napari.readout import cellularity_headline
from napari_histoseg._napari.segment_widget import SegmentWidget, format_counts
from napari_histoseg.io.store import LabelStore
from napari_histoseg.samples import sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", type=Path, help="the folder `histoseg demo --out` wrote")
    parser.add_argument("png", type=Path)
    parser.add_argument("--zoom-box", type=int, nargs=4, default=(900, 700, 1700, 1700), help="y0 x0 y1 x1 (px)")
    args = parser.parse_args()

    store = LabelStore.open(args.demo_dir / "cmu-1-small-region.zarr")
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1400, 900)
    [image] = viewer.open(str(sample_path()), plugin="napari-histoseg")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment tumor cells", area="right")
    data, geometry = L.store_layer_data(store, image)
    summary = store.info.get("summary", {})
    labels = L.show_labels(viewer, image, data, metadata={"summary": summary}, **geometry)
    labels.opacity = 0.6
    viewer.window.screenshot(flash=False)  # lays the window out, as a user first sees it (empty readout)
    # What the widget shows once a run and its cell measurement have finished.
    readout = layer_readout(labels)
    details = f"{readout['text']}\nPixels: {format_counts(L.store_counts(store))}"
    widget.result.set_text(cellularity_headline(readout["whole"]), details)
    y0, x0, y1, x1 = args.zoom_box
    scale = np.asarray(image.scale[-2:])
    viewer.scene.camera.center = tuple(scale * [(y0 + y1) / 2, (x0 + x1) / 2])
    viewer.scene.camera.zoom = 1.0
    viewer.reset_view()
    viewer.scene.camera.center = tuple(scale * [(y0 + y1) / 2, (x0 + x1) / 2])
    viewer.scene.camera.zoom *= max(image.data[0].shape[0] / (y1 - y0), 1.0) * 0.9
    deadline = time.monotonic() + 5  # let napari load the multiscale tiles of the new view
    while time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    shot = viewer.window.screenshot(flash=False, canvas_only=False)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.png, shot, check_contrast=False)
    print(f"wrote {args.png} ({shot.shape[1]} x {shot.shape[0]})")
    viewer.close()


if __name__ == "__main__":
    main()
