"""Whole-slide inference: devices, tiling, blockwise prediction."""
