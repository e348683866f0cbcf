#!/bin/bash
# Train three size models (engine/scale_regressor.py) of different widths on one stream of samples on a GPU server,
# from the images `python scripts/train_scale_regressor.py --pack .scale_data` wrote. Needs torch, numpy, scipy,
# scikit-image, Pillow and safetensors (not napari, zarr or dask). Writes under ${OUT:-runs/scale_gpu}/r.
# Environment: MINUTES (default 8), WORKERS (default: cores - 1), EVERY (steps between checkpoints, 500), BATCH (128),
# MONITOR (val crops, 2048), DATA (the packed images, .scale_data).
set -o pipefail
out="${OUT:-runs/scale_gpu}/r"
if command -v nvidia-smi >/dev/null; then  # the GPU server (as root there)
  mount -o remount,size=16G /dev/shm 2>/dev/null  # the sample workers pass batches through shared memory
  nvidia-smi -L
fi
echo "$(nproc) cores; $(df -h /dev/shm | tail -1)"
export PYTHONPATH="src:scripts${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 scripts/train_scale_regressor.py --packed "${DATA:-.scale_data}" --out "$out" --minutes "${MINUTES:-8}" \
  --steps 1000000 --batch "${BATCH:-128}" --workers "${WORKERS:-$(($(nproc) - 1))}" --monitor "${MONITOR:-2048}" \
  --save-every "${EVERY:-500}" \
  --widths 24,32,64,96 --widths 32,64,128,192 --widths 48,96,192,256 2>&1 | grep -v UserWarning
