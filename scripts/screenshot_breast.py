"""Before / after pictures of a breast carcinoma image: two models' labels in a real napari viewer, side by side.

    xvfb-run -a python scripts/screenshot_breast.py --before OLD.safetensors --after NEW.safetensors \
        --image ../shared/data/brca-m2c/val/input/NAME.png docs/breast-before-after.png
    xvfb-run -a python scripts/screenshot_breast.py --typer --image ... docs/breast-cell-typer.png

(``--typer``: the after picture is the same model with the cell typer.)

Each model segments the image as ``histoseg predict`` would (at 0.5 um/px); the viewer shows the image, the labels
(red tumor, green non-tumor, blue boundary) and the annotators' points (magenta tumor, cyan other), with the
tumor cellularity each model reports against the annotators' in the corner.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from skimage.io import imsave

from napari_histoseg._napari.layers import class_colormap
from napari_histoseg.analysis.instances import cell_rules, cells_from_labels
from napari_histoseg.engine.infer import InferenceSettings, run
from napari_histoseg.engine.jobs import load_model, segment_image
from napari_histoseg.training.image_files import read_image
from napari_histoseg.training.points import read_points


def shot(image: np.ndarray, labels: np.ndarray, points, tumor, title: str, mpp: float) -> np.ndarray:
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1000, 640)
    viewer.add_image(image, name="H&E", scale=(mpp, mpp))
    layer = viewer.add_labels(labels, name="histoseg", scale=(mpp, mpp), colormap=class_colormap(), opacity=0.45)
    layer.contour = 0
    colours = np.where(tumor[:, None], [1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0])
    viewer.add_points(
        points, name="annotations", scale=(mpp, mpp), size=3, face_color=colours, border_width=0, opacity=0.9
    )
    viewer.text_overlay.visible = True
    viewer.text_overlay.position = "top_left"
    viewer.text_overlay.text = title
    viewer.text_overlay.font_size = 11
    viewer.text_overlay.color = "white"
    viewer.window.screenshot(flash=False)  # lays the window out first (else the canvas comes back black)
    viewer.reset_view()
    picture = viewer.screenshot(canvas_only=True, flash=False)
    viewer.close()
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("png", type=Path)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--before", help="checkpoint (default: the bundled model)")
    parser.add_argument("--after", help="checkpoint (default: the before model)")
    parser.add_argument("--typer", action="store_true", help="the after picture with the cell typer")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--tumor-classes", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    image = read_image(args.image)
    points, classes = read_points(args.image.parent.parent / "points" / f"{args.image.stem}.csv", image.shape[:2])
    tumor = np.isin(classes, args.tumor_classes)
    truth = f"annotators: {100 * tumor.mean():.0f}% of {len(tumor):,} cells"
    pictures = []
    after = "after, cell typer" if args.typer else "after"
    for name, checkpoint, typer in (("before", args.before, False), (after, args.after or args.before, args.typer)):
        model, card = load_model(checkpoint)
        settings = InferenceSettings(cell_typer=typer)
        labels = run(segment_image(image, model, card, settings, mpp=args.mpp)).labels
        _, cell_classes = cells_from_labels(labels, **cell_rules(args.mpp))
        n, t = len(cell_classes) - 1, int((cell_classes == 1).sum())
        title = f"{name}: {100 * t / max(n, 1):.0f}% tumor ({t:,} of {n:,} cells)\n{truth}"
        pictures.append(shot(image, labels, points, tumor, title, args.mpp))
        print(title)
    h = min(p.shape[0] for p in pictures)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.png, np.concatenate([p[:h] for p in pictures], axis=1), check_contrast=False)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
