#!/usr/bin/env bash
# Build the wheel and sdist, install the wheel (not editable) in a fresh virtual environment, and check what a
# napari plugin-manager install gets: the manifest validates, the command runs, the demo segments the sample with
# the bundled model, and the reader opens the sample slide.
set -euo pipefail
cd "$(dirname "$0")/.."

rm -rf dist .venv-wheel
python -m pip install -q build twine
python -m build -q -o dist .
twine check dist/*
wheel=$(ls dist/*.whl)
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["napari_histoseg/napari.yaml", "napari_histoseg/samples/cmu-1-small-region.svs",
        "napari_histoseg/weights/default.safetensors", "napari_histoseg/weights/default.json",
        "napari_histoseg/weights/scale_regressor.safetensors", "napari_histoseg/weights/cell_typer.safetensors"]
missing = [n for n in need if n not in names]
unwanted = [n for n in names if n.startswith(("tests/", "benchmarks/", "napari_histoseg/tests"))]
assert not missing, f"wheel lacks {missing}"
assert not unwanted, f"wheel carries {unwanted[:5]}"
print(f"wheel holds the manifest, the sample slide and the model ({len(names)} files)")
PY

python3 -m venv .venv-wheel
# shellcheck disable=SC1091
. .venv-wheel/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q "$wheel" PyQt6
cd /tmp  # away from the source tree: everything must come from the installed wheel
python -c "import napari_histoseg, sys; assert 'site-packages' in napari_histoseg.__file__, napari_histoseg.__file__"
npe2 validate napari-histoseg --imports
histoseg --help > /dev/null
histoseg demo --out /tmp/histoseg-wheel-demo
python - <<'PY'
from napari_histoseg._napari.reader import get_reader
from napari_histoseg.samples import sample_path

layers = get_reader(str(sample_path()))(str(sample_path()))
data, meta, kind = layers[0]
assert kind == "image" and meta["multiscale"] and data[0].shape[:2] == (2967, 2220), (kind, data[0].shape)
print("the installed reader opens the sample slide:", [tuple(d.shape) for d in data])

from napari_histoseg.engine.mpp_estimate import estimate_mpp
from napari_histoseg.io.slide import open_slide

with open_slide(sample_path()) as slide:
    estimate = estimate_mpp(slide.levels)
assert 0.35 < estimate.mpp < 0.7, estimate.text  # the file states 0.499
print("the installed size model estimates the sample's resolution:", estimate.text)

from napari_histoseg.engine.cell_typer import load_cell_typer

print("the installed cell typer loads:", sum(p.numel() for p in load_cell_typer().parameters()), "parameters")
PY
