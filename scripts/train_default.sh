#!/usr/bin/env bash
# Train the default model shipped with napari-histoseg on CoNSeP (train: 22 tiles, 352 patches; val: 5 tiles, 80).
#
# Budget: about 2 hours on a 2-core CPU. Measured here on 2 shared cores (torch 2.13, fp32, batch 8, 256 px):
# a training step of the full network (width 1.0, 4.1 M parameters) runs at ~0.45 samples/s, width 0.5
# (1.0 M parameters, ~1/4 of the FLOPs) at ~0.8 samples/s; about twice that on 2 idle cores. At width 1.0,
# 2 hours would give ~18 epochs of 352 patches; at width 0.5 ~30, and the model also segments slides ~3x
# faster on a CPU. So: width 0.5, 28 epochs (~9,900 patches, ~1.7 h at ~1.6 samples/s) plus one validation
# pass of the 80 val patches per epoch (~10 s each). RMSprop (the method's optimiser), lr 5e-4 with 100 warm-up
# steps and a cosine decay, weighted cross-entropy with N/N_c class weights, light H&E stain jitter so the model
# tolerates other labs' staining. The checkpoint with the best validation score (mean of detection F1, tumor
# type F1 and mean cell Dice) is RUN_DIR/best.safetensors; it records mpp 0.25 (CoNSeP is 40x).
# On a GPU the same command takes a few minutes; there, --width 1.0 --epochs 100 is the better model.
#
# Usage: scripts/train_default.sh [RUN_DIR] [extra histoseg train options...]
# Resume an interrupted run with the same command plus --resume.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${HISTOSEG_CONSEP:-$here/../shared/data/consep}"
run_dir="${1:-$here/runs/default-consep}"
shift || true

exec python -m napari_histoseg.cli train "$data/train" \
    --val "$data/val" \
    --out "$run_dir" \
    --width 0.5 \
    --epochs 28 \
    --batch-size 8 \
    --patch 256 \
    --optimizer rmsprop \
    --lr 5e-4 \
    --warmup 100 \
    --scheduler cosine \
    --stain-jitter 0.03 \
    --model-mpp 0.25 \
    --select-metric score \
    --seed 0 \
    --device auto \
    "$@"
