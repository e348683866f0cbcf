"""Jobs: each thing napari-histoseg does, written once, for every front end.

- :mod:`.segment`: a slide into a label store (here or on dask workers; whole or regions; resume and overwrite
  policy), an image in memory; :mod:`.folder`: a folder of images into ``*_pred.png``.
- :mod:`.measure`: the one consumer of cells (CSV, GeoJSON, cellularity map, summary, readout).
- :mod:`.evaluate`: scores exactly what segment writes; :mod:`.train`: training with progress.

Every job is a generator of :class:`~.progress.Progress` events that returns its outcome: the CLI drives it
(:func:`~.progress.drive`), the napari widgets run it in a thread worker. No napari or Qt here.
"""
