#!/usr/bin/env bash
# Train the default model on a lent GPU machine in one prepared call, and bring the best weights back.
#
# Here, once:   scripts/gpu_train.sh --prepare
#               copies ../shared/data/consep (47 MB) into .device-data/consep (git-ignored) for the call to carry.
# On the GPU:   the device tool's run, in the repo root, with carry [".device-data"] and timeout_s 600:
#               bash scripts/gpu_train.sh
# Back here:    python scripts/bundle_model.py <files_at>/finetune/best.safetensors (or scratch/), after comparing
#               the two runs' evaluations: the last line of the output is one JSON object holding both.
#
# The GPU machine has torch, numpy, scipy, scikit-image, tifffile and safetensors but no napari, zarr or dask: the
# package runs from src/ (PYTHONPATH), and its training path imports none of those (tests/test_gpu_script.py runs
# this script on the CPU with them blocked). Two runs share the GPU, each sized to a wall-clock budget:
#   finetune  the bundled model, lr 1e-4 (cosine, 100 warm-up steps), stain jitter 0.1, weight average (EMA 0.999);
#   scratch   ResUNet++ at full width from scratch, lr 5e-4 (cosine, 200 warm-up steps), stain jitter 0.1, EMA 0.999.
# Both: RMSprop, batch 8, 256 px patches, weighted cross-entropy (N/N_c), every epoch validated on CoNSeP val, the
# best checkpoint kept. Their epoch counts come from a timed calibration epoch, so that both finish inside
# BUDGET_SECONDS (default 390 s; one command may run 600 s, and the machine's start-up counts too).
#
# Environment: BUDGET_SECONDS, DEVICE (default auto), MAX_EPOCHS (default 400), PATCH (default 256), BATCH (default
# 8), WORKERS (default 6), DATA (default .device-data/consep), OUT (set by the device tool; default runs/gpu-out).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .device-data
    rm -rf .device-data/consep
    cp -r "${HISTOSEG_CONSEP:-$here/../shared/data/consep}" .device-data/consep
    du -sh .device-data/consep
    exit 0
fi

data="${DATA:-.device-data/consep}"
out="${OUT:-runs/gpu-out}"
budget="${BUDGET_SECONDS:-390}"
device="${DEVICE:-auto}"
max_epochs="${MAX_EPOCHS:-400}"
patch="${PATCH:-256}"
batch="${BATCH:-8}"
workers="${WORKERS:-6}"  # loader processes per run: two runs and their main processes share 16 cores
work="$(mktemp -d)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[[ -d "$data/train" && -d "$data/val" ]] || { echo "error: $data/train and $data/val not found (run --prepare here)"; exit 2; }
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

common=(--val "$data/val" --batch-size "$batch" --patch "$patch" --optimizer rmsprop --scheduler cosine
    --stain-jitter 0.1 --model-mpp 0.25 --select-metric score --ema 0.999 --device "$device" --seed 0
    --num-workers "$workers")
finetune=(--init src/napari_histoseg/weights/default.safetensors --lr 1e-4 --warmup 100)
scratch=(--width 1.0 --lr 5e-4 --warmup 200)

train() {  # train NAME EPOCHS [options...]
    local name="$1" epochs="$2"
    shift 2
    python3 -m napari_histoseg.cli train "$data/train" --out "$work/$name" --epochs "$epochs" "${common[@]}" "$@"
}

# Calibration: one epoch of both runs side by side, as they will run; each prints its epoch's seconds (training
# steps and validation, without start-up), and the slower one sets the pace. The first epoch is the slowest
# (cuDNN autotuning, warm-up), so the estimate errs on the safe side.
start=$(date +%s.%N)
train cal-finetune 1 "${finetune[@]}" > "$work/cal-finetune.log" 2>&1 &
train cal-scratch 1 "${scratch[@]}" > "$work/cal-scratch.log" 2>&1 &
wait
epochs=$(python3 - "$start" "$budget" "$max_epochs" "$work/cal-finetune" "$work/cal-scratch" <<'PY'
import sys, time
from napari_histoseg.training.run_folder import read_metrics_csv
start, budget, max_epochs, runs = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
spent = time.time() - start
seconds = []
for run in runs:
    rows = read_metrics_csv(run)  # the run folder's metrics.csv: one row per finished epoch
    if not rows:
        sys.exit(f"calibration failed, see {run}.log:\n" + open(f"{run}.log").read()[-2000:])
    seconds.append(max(1, round(float(rows[-1]["seconds"]))))
epochs = max(1, min(max_epochs, int((budget - spent) / max(seconds))))
print(f"calibration: {spent:.0f} s in all, an epoch of both runs side by side {max(seconds)} s -> {epochs} epochs",
      file=sys.stderr)
print(epochs)
PY
)
echo "$epochs epochs each"

train finetune "$epochs" "${finetune[@]}" > "$out/finetune.log" 2>&1 &
train scratch "$epochs" "${scratch[@]}" > "$out/scratch.log" 2>&1 &
wait || true
tail -n 3 "$out/finetune.log" "$out/scratch.log"

for name in finetune scratch; do
    run="$work/$name"
    [[ -f "$run/best.safetensors" ]] || { echo "$name: no best checkpoint"; continue; }
    mkdir -p "$out/$name"  # 3 files per run and 2 logs: the device tool brings back 8 files at most
    cp "$run/best.safetensors" "$run/best.json" "$run/metrics.csv" "$out/$name/"
    echo "== $name: histoseg evaluate on $data/val"
    python3 -m napari_histoseg.cli evaluate "$data/val" --model "$run/best.safetensors" --device "$device" --json |
        tee "$work/$name-evaluation.json" || echo "$name: evaluation failed"
done

# The last line: one JSON object a caller reads (epochs, each run's best checkpoint and its evaluation).
python3 - "$epochs" "$out" "$work" <<'PY'
import json, sys
from pathlib import Path
epochs, out, work = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
runs = {}
for name in ("finetune", "scratch"):
    best, evaluation = out / name / "best.safetensors", work / f"{name}-evaluation.json"
    try:
        scores = json.loads(evaluation.read_text())
    except (OSError, ValueError):
        scores = None
    runs[name] = {"best": str(best) if best.is_file() else None, "evaluation": scores}
print(json.dumps({"epochs": epochs, "runs": runs}))
PY
rm -rf "$work"
