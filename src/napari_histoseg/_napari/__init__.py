"""The thin napari layer: reader, writer, sample data, widgets. Only this package imports napari/Qt."""
