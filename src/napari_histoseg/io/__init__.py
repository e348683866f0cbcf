"""Reading slides and writing outputs (no napari)."""
