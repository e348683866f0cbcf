"""``python -m napari_histoseg.cli``: the ``histoseg`` command."""

import sys

from . import main

sys.exit(main())
