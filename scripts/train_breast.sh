#!/usr/bin/env bash
# Fine-tune a model on CoNSeP (colour masks, colon) and BRCA-M2C (a point per annotated cell, breast carcinoma,
# TCGA) together: the recipe of the breast-aware model (docs/point-training.md, docs/bundled-model.md).
#
# Starts from INIT (default: the CoNSeP-only bundled model this recipe was first run from), which also serves as
# the teacher whose cells the points type. BRCA-M2C's site AC is kept out of training as a cross-site check
# (measure it with `histoseg evaluate ../shared/data/brca-m2c/train --sites AC --mpp 0.5 --tumor-classes 2`).
# RMSprop with a 100-step warm-up (without it, the first RMSprop step of a fine-tune with frozen BatchNorm
# statistics wrecks the model), half of the patches from each source, stain jitter 0.1, 8 epochs of 320 patches,
# CoNSeP val and BRCA-M2C val scored at every epoch.
#
# Usage: scripts/train_breast.sh [RUN_DIR] [INIT] [extra histoseg train options...]
# Rerun the same command with --resume to continue an interrupted run. Bundle the result with
# `python scripts/bundle_model.py RUN_DIR/best.safetensors` (it ships only a model that meets the targets).
set -euo pipefail
RUN_DIR=${1:-runs/breast}
INIT=${2:-src/napari_histoseg/weights/default.safetensors}
shift $(( $# > 2 ? 2 : $# ))
DATA=${HISTOSEG_DATA:-$(dirname "$0")/../../shared/data}

histoseg train "$DATA/consep/train" --val "$DATA/consep/val" --out "$RUN_DIR" --init "$INIT" \
    --epochs 8 --batch-size 8 --samples-per-epoch 320 --lr 5e-5 --warmup 100 --scheduler cosine \
    --optimizer rmsprop --stain-jitter 0.1 \
    --points "$DATA/brca-m2c/train" --exclude-sites AC --points-val "$DATA/brca-m2c/val" \
    --points-mpp 0.5 --tumor-classes 2 --points-share 0.5 "$@"
