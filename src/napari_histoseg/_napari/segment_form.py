"""The Segment widget's controls: the form's choices and the collapsed "Advanced" settings, their defaults read
from :class:`~napari_histoseg.engine.infer.InferenceSettings` (the command line reads the same)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox

from napari_histoseg.engine.infer import InferenceSettings

from .form import PathField, tip
from .workers import device_choices

EXTENTS = ("whole image", "current view", "shapes")
#: The cell typer choices and the engine's setting each stands for (``InferenceSettings.cell_typer``).
CELL_TYPER_CHOICES = {"auto": None, "on": True, "off": False}


def default_output_dir() -> Path:
    """Where slide results go unless the user picks a folder."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-histoseg", appauthor=False)) / "predictions"


TIPS = {
    "image": "the H&E image layer to segment (a slide opened with napari-histoseg, or an RGB image)",
    "resolution": "microns per pixel of the image at full resolution; the model resamples the image to the "
    "resolution it was trained at (the bundled model: 0.25 um/px, 40x). A 20x scan is about 0.5, a 40x scan 0.25",
    "model": "the network that segments: the bundled model, a checkpoint you added, or one you trained",
    "extent": "what to segment: the whole image, what the canvas shows now, or the regions drawn in a Shapes layer",
    "shapes": "the Shapes layer whose shapes (rectangles, polygons, ellipses) mark regions: segmented with "
    "'segment: shapes', and each measured on its own (cellularity per region)",
    "outline": "draw the cells as outlines instead of filled colour, to see the tissue under them",
    "add_model": "a checkpoint file (.safetensors, with its .json model card next to it) to add to the model list",
    "device": "where the network runs: auto picks a GPU (CUDA or Apple MPS) when there is one, else the CPU",
    "stain_normalize": "map the slide's H&E colours onto the model's training data (Reinhard); turn it off for "
    "slides from the lab the model was trained on",
    "test_time_flips": "average the model's output over the four flips of each tile: slightly more accurate, 4x slower",
    "cell_typer": "decide each cell's type (tumor or not) again from a 40 um crop around it with the cell typer, "
    "trained on breast carcinoma (BRCA-M2C) and colon (CoNSeP) cells beside the bundled model. auto: on with the "
    "bundled model, off with a model you trained or added (it would override its types); about 6 s more per 1000 "
    "cells on a 2-core CPU",
    "measure": "after segmenting, count the cells and compute the tumor cellularity (per Shapes region too)",
    "cellularity_map": "add an image layer colouring each 256 px square by its tumor cellularity",
    "new_layer": "put the result in a new layer instead of replacing the previous result of this image",
    "output_dir": "slides only: the folder where the result store (<name>.labels.zarr) is written; a rerun resumes",
    "skip_background": "slides only: do not segment glass; the tissue is found on a low-resolution level",
    "batch_size": "tiles per network call; larger is faster on a GPU until its memory runs out",
    "tile": "size of the square the network sees, in pixels at the model's resolution",
    "overlap": "fraction by which neighbouring tiles overlap (blended, so no seams show)",
    "opening": "radius (px at the model's resolution) of the morphological opening that removes specks",
    "block": "slides: size of the blocks read, written and resumed as one unit",
    "run_button": "segment the chosen image (or the part chosen under 'segment') in the background",
    "cancel_button": "stop within a few seconds; finished tiles and blocks are kept and shown",
    "scheduler": "slides only: a dask scheduler address (tcp://host:8786) or local:N to spread the blocks over "
    "workers; empty: this process",
    "replace": "slides only: when the output folder holds a result of this image made with other settings, replace "
    "it; unticked, such a result is kept and the run refused (a rerun with the same settings always resumes)",
}


class AdvancedControls:
    """The expert settings, each a magicgui widget; :meth:`settings` reads them as the engine's settings."""

    #: The controls kept between napari sessions, by their saved name.
    PERSISTED = {
        "device": "device", "batch_size": "batch_size", "tile": "tile", "overlap": "overlap", "opening": "opening",
        "block": "block", "skip_background": "skip_background", "stain_normalize": "stain_normalize",
        "test_time_flips": "test_time_flips", "cell_typer_mode": "cell_typer", "output_dir": "output_dir",
        "scheduler": "scheduler", "measure": "measure", "cellularity_map": "cellularity_map",
    }  # fmt: skip
    #: Only for slides.
    SLIDE_ONLY = ("output_dir", "skip_background", "block", "scheduler", "replace")

    def __init__(self) -> None:
        d = InferenceSettings()
        self.add_model = PathField(label="add checkpoint", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="device", choices=device_choices(), value=d.device)
        self.stain_normalize = CheckBox(text="stain normalisation", value=d.stain_normalize)
        self.test_time_flips = CheckBox(text="test-time flips (4x slower)", value=d.test_time_flips)
        self.cell_typer = ComboBox(label="cell typer", choices=list(CELL_TYPER_CHOICES), value="auto")
        self.measure = CheckBox(text="count cells (tumor cellularity)", value=True)
        self.cellularity_map = CheckBox(text="cellularity map layer", value=False)
        self.new_layer = CheckBox(text="new layer (keep the previous result)", value=False)
        self.output_dir = PathField(label="output folder", mode="d", value=default_output_dir())
        self.replace = CheckBox(text="replace a result made with other settings", value=False)
        self.skip_background = CheckBox(text="skip background", value=d.skip_background)
        self.batch_size = SpinBox(label="batch size", min=1, max=512, value=d.batch_size)
        self.tile = SpinBox(label="tile (px)", min=64, max=2048, step=32, value=d.tile)
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.75, step=0.05, value=d.overlap)
        self.opening = SpinBox(label="opening radius", min=0, max=20, value=d.opening_radius)
        self.block = SpinBox(label="block (px)", min=256, max=8192, step=256, value=d.block)
        self.scheduler = LineEdit(label="dask scheduler", value="")

    @property
    def widgets(self) -> list:
        """In the order the section shows them."""
        return [
            self.add_model, self.device, self.stain_normalize, self.test_time_flips, self.cell_typer, self.measure,
            self.cellularity_map, self.new_layer, self.output_dir, self.replace, self.skip_background,
            self.batch_size, self.tile, self.overlap, self.opening, self.block, self.scheduler,
        ]  # fmt: skip

    def persisted(self) -> dict:
        return {key: getattr(self, name) for key, name in self.PERSISTED.items()}

    def settings(self) -> InferenceSettings:
        """The engine's settings these controls describe (raises ``ValueError`` for impossible ones)."""
        return InferenceSettings(
            tile=self.tile.value,
            overlap=self.overlap.value,
            block=self.block.value,
            opening_radius=self.opening.value,
            skip_background=self.skip_background.value,
            stain_normalize=self.stain_normalize.value,
            test_time_flips=self.test_time_flips.value,
            cell_typer=CELL_TYPER_CHOICES[self.cell_typer.value],
            batch_size=self.batch_size.value,
            device=self.device.value,
        )


def add_tips(widget, tips: dict) -> None:
    """A tooltip on every control of ``widget`` that ``tips`` names."""
    for key, text in tips.items():
        control = getattr(widget, key, None)
        if control is not None:
            tip(control, text)


@lru_cache(maxsize=16)
def card_mpp(path: Path) -> float | None:
    """The resolution a checkpoint's model card states (cached: asked on every camera move)."""
    from napari_histoseg.model.checkpoint import read_card

    try:
        return read_card(path).mpp
    except (OSError, ValueError):  # only used for a size estimate
        return None
