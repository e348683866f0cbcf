"""The image resolution (microns per pixel) as a form field: from the file, typed in, or estimated.

The model segments at the resolution it was trained at, so a slide at the wrong assumed resolution is segmented
at the wrong scale and most nuclei get no label. The field shows where its value comes from and is marked when
the image states none.
"""

from __future__ import annotations

from magicgui.widgets import Container, FloatSpinBox, PushButton

from ..units import MICRON_UNITS
from .form import tip
from .readout import readout_label

MPP_KEY = "histoseg_mpp"  # image layer metadata: {"mpp": float, "source": "entered" | "estimated", "note": str}
UNKNOWN_STYLE = "color: #f0a840;"  # the note, when the file states no resolution


def layer_mpp(layer) -> tuple[float | None, str]:
    """Microns per level-0 pixel of an image layer and where it comes from ("file", "entered", "estimated",
    "scale"), or ``(None, "unknown")``."""
    meta = getattr(layer, "metadata", {}) or {}
    chosen = meta.get(MPP_KEY)
    if isinstance(chosen, dict) and chosen.get("mpp"):
        return float(chosen["mpp"]), str(chosen.get("source", "entered"))
    if meta.get("mpp"):
        return float(meta["mpp"]), "file"
    units = [str(u) for u in getattr(layer, "units", ())[-2:]]
    if units and all(u in MICRON_UNITS for u in units):
        return float(layer.scale[-1]), "scale"
    return None, "unknown"


class ResolutionField(Container):
    """A microns-per-pixel spin box (0 = unknown) with an Estimate button and a line saying where the value is from."""

    def __init__(self, label: str = "resolution"):
        self.spin = FloatSpinBox(min=0.0, max=20.0, step=0.01, value=0.0)
        self.spin.native.setDecimals(3)
        self.spin.native.setSuffix(" um/px")
        self.spin.native.setSpecialValueText("unknown")
        self.estimate = PushButton(text="Estimate")
        tip(
            self.estimate,
            "estimate the resolution from the image: a small size model, trained on colon and breast H&E at known "
            "resolutions, reads a few tissue tiles (a few seconds); the tiles' agreement gives the confidence",
        )
        self.note = readout_label()  # wraps, and keeps the height its lines need
        row = Container(widgets=[self.spin, self.estimate], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        super().__init__(widgets=[row, self.note], labels=False, label=label)
        self.margins = (0, 0, 0, 0)

    @property
    def value(self) -> float | None:
        """Microns per pixel, or None when unknown."""
        return float(self.spin.value) or None

    @value.setter
    def value(self, value: float | None) -> None:
        self.spin.value = float(value or 0.0)

    def display(self, mpp: float | None, source: str, note: str = "") -> None:
        """Show a value and where it comes from; an unknown value is marked."""
        self.value = mpp
        unknown = mpp is None
        self.note.native.setStyleSheet(UNKNOWN_STYLE if unknown else "")
        if note:
            text = note
        elif unknown:
            text = "\u26a0 unknown: enter it or Estimate"
        else:
            text = {"file": "from the file", "scale": "from the layer's scale", "entered": "entered by you"}.get(
                source, source
            )
        self.note.value = text
        self.unknown = unknown
