#!/usr/bin/env bash
# Train the default model shipped with napari-histoseg on CoNSeP (train: 22 tiles, 352 patches of 256 px;
# val: 5 other tiles, 80 patches), the recipe that made src/napari_histoseg/weights/default.safetensors.
#
# Four stages: three of ResUNet++ at width 0.5 (1.0 M parameters: ~1/4 of the full network's FLOPs, so ~3x faster
# to train on a CPU), then the full network (width 1.0) widened from them; all with RMSprop (the method's
# optimiser), batch 8, weighted cross-entropy with N/N_c class weights, dihedral + small-rotation augmentation
# and H&E stain jitter, a cosine learning-rate decay:
#   stage 1  RUN_DIR/stage1: from scratch, lr 5e-4 with 100 warm-up steps, 14 epochs, stain jitter 0.03.
#   stage 2  RUN_DIR/stage2: fine-tuned from stage 1's best, lr 5e-4 with 50 warm-up steps, 45 epochs,
#            stain jitter 0.05 (stronger colour augmentation for other labs' staining).
#   stage 3  RUN_DIR/stage3: fine-tuned from stage 2's best, lr 3e-4 with 50 warm-up steps, 30 epochs, stain
#            jitter 0.1.
#   stage 4  RUN_DIR/stage4: stage 3's best widened to width 1.0 (4.1 M parameters, the design's full network) by
#            scripts/widen_model.py (Net2WiderNet: same predictions, 2% weight noise), then fine-tuned: lr 1e-4
#            with 100 warm-up steps, 35 epochs, stain jitter 0.1. (lr 3e-4 wrecked the BatchNorm running
#            statistics of the widened network in its first epoch: validation detection F1 0.004.)
# Every epoch is validated on CoNSeP val (its pooled colours mapped onto the training data's, as inference does;
# the bundled model's stages 1 and 2 ran before that existed and were validated on the raw colours); the checkpoint with
# the best score (mean of detection F1, tumor type F1 and mean cell Dice) is kept as RUN_DIR/stage4/best.safetensors,
# recording mpp 0.25 (CoNSeP is 40x), the logit bias -log(w_c) that undoes the class weighting at inference and the
# training images' colour statistics (stain normalisation target). Bundle it with scripts/bundle_model.py.
#
# Measured on a 2-core CPU (torch 2.13, fp32): ~2 min per epoch on idle cores (stage 1 took 102 min of epoch
# time on shared cores, stage 2 128 min, stage 3 63 min). On a GPU the whole script takes minutes; there, more epochs
# (e.g. stage 2 with --epochs 200) and --width 1.0 are the better model; scripts/gpu_train.sh is the prepared call
# for a lent GPU machine (a longer fine-tune of the bundled model and a full-width run from scratch).
#
# Usage: scripts/train_default.sh [RUN_DIR] [extra histoseg train options for every stage...]
# Rerun the same command to resume an interrupted run: a stage with a state file continues where it stopped
# (a finished stage does nothing more).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${HISTOSEG_CONSEP:-$here/../shared/data/consep}"
run_dir="${1:-$here/runs/default-consep}"
shift || true

train() {  # train OUT_DIR [options...]: resumes OUT_DIR when it holds a run
    local out="$1"
    shift
    local resume=()
    [[ -f "$out/state.safetensors" ]] && resume=(--resume)
    python -m napari_histoseg.cli train "$data/train" \
        --val "$data/val" \
        --width 0.5 \
        --batch-size 8 \
        --patch 256 \
        --optimizer rmsprop \
        --lr 5e-4 \
        --scheduler cosine \
        --model-mpp 0.25 \
        --select-metric score \
        --seed 0 \
        --device auto \
        --out "$out" "${resume[@]}" "$@"
}

train "$run_dir/stage1" --epochs 14 --warmup 100 --stain-jitter 0.03 "$@"
train "$run_dir/stage2" --init "$run_dir/stage1/best.safetensors" --epochs 45 --warmup 50 --stain-jitter 0.05 "$@"
train "$run_dir/stage3" --init "$run_dir/stage2/best.safetensors" --epochs 30 --warmup 50 --stain-jitter 0.1 \
    --lr 3e-4 "$@"
[[ -f "$run_dir/stage4-init.safetensors" ]] ||
    python "$here/scripts/widen_model.py" "$run_dir/stage3/best.safetensors" "$run_dir/stage4-init" --noise 0.02
train "$run_dir/stage4" --init "$run_dir/stage4-init.safetensors" --width 1.0 --epochs 35 --warmup 100 \
    --stain-jitter 0.1 --lr 1e-4 "$@"
