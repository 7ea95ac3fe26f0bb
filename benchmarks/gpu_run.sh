#!/usr/bin/env bash
# The GPU measurements of issues #3 (the seed's recipe) and #6 (the fast detector), as one command for the lent GPU
# machine, which has CUDA, JAX and PyTorch but no TensorFlow and no network. realfake trains there through Keras'
# JAX backend (`training.ArrayBatches` replaces tf.data); everything else is the library's code path.
#
# Prepare here: `make gpu-prep` (wheels into .whl/, the packed archive into .gpu/; both git-ignored).
# Run there (device tool, carry .whl and .gpu):  bash benchmarks/gpu_run.sh [STEP ...] (the steps are listed below)
# Results: $OUT/results.tar.gz (one folder per step, as benchmarks/fast_detector.py writes them, plus its log). A
# step that saves its model (--save-models) is then re-scored with test-time shifts (benchmarks/tta_shifts.py).
# Each step is cut at its time limit so that one slow model cannot eat the others' share of the lease; a step cut
# short leaves its per-epoch log lines (validation and test accuracy, seconds) in its .log.
# Local rehearsal on CPU: SKIP_WHEELS=1 RAW=<npz> SMOKE_ARGS="--per-class 300 --epochs 1" OUT=/tmp/o bash ...
set -u
OUT=${OUT:-/tmp/gpu_out}
RES=${RES:-/tmp/gpu_results}
mkdir -p "$OUT" "$RES"
say() { echo "[$(date +%T)] $*"; }

if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null

# One real train step decides the backend: JAX if Keras runs on it here, else PyTorch (both ship on the machine).
probe='import keras, numpy as np
m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
m.compile("adam", "binary_crossentropy", jit_compile="auto")
m.fit(np.zeros((64, 8), "float32"), np.zeros(64, "int32"), batch_size=32, verbose=0)
print("backend", keras.backend.backend(), keras.__version__, "ok")'
if ! python3 -c "$probe"; then
  say "Keras on $KERAS_BACKEND failed its probe; using torch"
  export KERAS_BACKEND=torch
  python3 -c "$probe" || exit 1
fi

# realfake's own check of training under JAX (skipped under PyTorch): no TensorFlow imported, epochs run
[ "$KERAS_BACKEND" = jax ] && python3 -m pytest -q -p no:cacheprovider tests/test_jax_backend.py

RAW=${RAW:-/tmp/cifake-large.npz}
MODELS=${MODELS:-/tmp/gpu_models}  # saved models stay on the machine (too large to come back)
if [ ! -f "$RAW" ]; then
  python3 benchmarks/ship_archive.py unpack .gpu/cifake-large.jpgs.xz /tmp/cifake-large.zip || exit 1
  python3 benchmarks/ship_archive.py decode /tmp/cifake-large.zip "$RAW" 2>/dev/null || exit 1
fi

limited() {  # limited LABEL SECONDS LOG LINES COMMAND...: COMMAND under a time limit into LOG; show LINES, bundle
  local label=$1 limit=$2 logfile=$3 lines=$4
  shift 4
  say "$label (limit ${limit}s)"
  timeout "$limit" "$@" >"$logfile" 2>&1
  say "$label: exit $?"
  grep -E "$lines|Error|error:" "$logfile" | cut -c1-220 | tail -12
  tar -czf "$OUT/results.tar.gz" -C "$RES" .
}

step() {  # step NAME SECONDS ARGS...: benchmarks/fast_detector.py
  local name=$1 limit=$2
  shift 2
  say "step $name: $*"
  # shellcheck disable=SC2086  # SMOKE_ARGS are words on purpose
  limited "step $name" "$limit" "$RES/$name.log" "epoch [0-9]+/|epoch [0-9]+ on test" \
    python3 benchmarks/fast_detector.py --raw "$RAW" --output-dir "$RES" --name "$name" "$@" ${SMOKE_ARGS:-}
}

shifts() {  # shifts NAME SECONDS: re-score NAME's saved model with test-time shifts (benchmarks/tta_shifts.py)
  limited "test-time shifts for $1" "$2" "$RES/$1.shifts.log" "tta_max_shift [0-9]+:" \
    python3 benchmarks/tta_shifts.py --raw "$RAW" --output-dir "$RES" --models-dir "$MODELS" --name "$1" \
    --tta-max-shifts 0 1
}

# name -> limit (seconds) and arguments; `bash benchmarks/gpu_run.sh [NAME ...]` runs those (default: the first
# three, which with the setup fit one 10-minute command; ResNet50 needs ~5.5 min for 20 epochs on an H200,
# EfficientNetV2B3 ~1 min for its first epoch alone, so its 20 epochs outlast one 10-minute command).
declare -A LIMIT=([fast_default]=95 [cnn]=65 [fast_wide]=120 [resnet50]=360 [efficientnet]=590
  [fast_wide_shift2]=190 [fast_deep_shift2]=280)
WIDE="--seeds 42 --batch-size 128 --set stage_filters=[128,256,512]"  # then --set's other KEY=VALUEs
declare -A ARGS=(
  [fast_default]="--seeds 42"
  [cnn]="--model cnn --per-class 25000 --stored-augment --seeds 42"
  [fast_wide]="--epochs 30 $WIDE max_parameters=3000000"
  [fast_wide_shift2]="--epochs 40 --train-minutes 2.3 --save-models $MODELS $WIDE max_parameters=3000000 max_shift=2"
  [fast_deep_shift2]="--epochs 40 --train-minutes 3.4 --save-models $MODELS $WIDE max_parameters=5000000 max_shift=2
    convs_per_stage=2"
  [resnet50]="--model resnet50 --set weights=null --per-class 25000 --stored-augment --seeds 42"
  [efficientnet]="--model efficientnet --set weights=null --per-class 25000 --stored-augment --seeds 42"
)
declare -A NAME=([fast_default]=gpu_fast_default [cnn]=gpu_cnn_seed_recipe [fast_wide]=gpu_fast_wide_30epochs
  [resnet50]=gpu_resnet50_seed_recipe [efficientnet]=gpu_efficientnet_seed_recipe
  [fast_wide_shift2]=gpu_fast_wide_40epochs_shift2 [fast_deep_shift2]=gpu_fast_deep_40epochs_shift2)
set -f  # the arguments hold [..] lists, not file patterns
for key in "${@:-fast_default cnn fast_wide}"; do
  for k in $key; do
    [ -n "${LIMIT[$k]:-}" ] || { say "unknown step $k; steps: ${!LIMIT[*]}"; exit 2; }
    # shellcheck disable=SC2086  # the arguments are words on purpose
    step "${NAME[$k]}" "${LIMIT[$k]}" ${ARGS[$k]}
    case "${ARGS[$k]}" in *--save-models*) shifts "${NAME[$k]}" 60 ;; esac
  done
done
say done
