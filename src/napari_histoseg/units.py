"""Names of length units, the same wherever a file or a layer states one (slides, napari layers, writers)."""

from __future__ import annotations

#: Spellings of the micrometre: OME's symbol (micro sign or Greek mu), napari/pint's name, and common words.
MICRON_UNITS: frozenset[str] = frozenset({"µm", "\u03bcm", "um", "micron", "micrometer", "micrometre"})

#: Micrometres per unit of the length units OME-XML and TIFF metadata use.
UM_PER_UNIT: dict[str, float] = {
    **dict.fromkeys(MICRON_UNITS, 1.0),
    "nm": 1e-3,
    "pm": 1e-6,
    "Å": 1e-4,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "in": 25400.0,
}


def is_micron(unit: object) -> bool:
    """Whether ``unit`` (a string, or a pint unit napari gives) names the micrometre."""
    return str(unit) in MICRON_UNITS
