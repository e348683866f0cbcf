"""Measurements on label maps and cells (numpy/scipy/skimage only)."""
