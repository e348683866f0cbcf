"""napari-histoseg: tumor-cell segmentation of H&E whole-slide images.

Importing the package loads neither torch nor Qt.
"""

__version__ = "0.1.0"
