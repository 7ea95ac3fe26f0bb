#!/usr/bin/env bash
# The GPU measurements of issues #3 (the seed's recipe) and #6 (the fast detector), as one command for the lent GPU
# machine, which has CUDA, JAX and PyTorch but no TensorFlow and no network. realfake trains there through Keras'
# JAX backend (`training.ArrayBatches` replaces tf.data); everything else is the library's code path.
#
# Prepare here: `make gpu-prep` (wheels into .whl/, the packed archive into .gpu/; both git-ignored).
# Run there (device tool, carry .whl and .gpu):  bash benchmarks/gpu_run.sh [fast_default cnn fast_wide resnet50 efficientnet]
# Results: $OUT/results.tar.gz (one folder per step, as benchmarks/fast_detector.py writes them, plus its log).
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
if [ ! -f "$RAW" ]; then
  python3 benchmarks/ship_archive.py unpack .gpu/cifake-large.jpgs.xz /tmp/cifake-large.zip || exit 1
  python3 benchmarks/ship_archive.py decode /tmp/cifake-large.zip "$RAW" 2>/dev/null || exit 1
fi

step() {  # step NAME SECONDS ARGS...
  local name=$1 limit=$2
  shift 2
  say "step $name (limit ${limit}s): $*"
  timeout "$limit" python3 benchmarks/fast_detector.py --raw "$RAW" --output-dir "$RES" --name "$name" "$@" \
    ${SMOKE_ARGS:-} >"$RES/$name.log" 2>&1
  say "step $name: exit $?"
  grep -E "epoch [0-9]+/|epoch [0-9]+ on test|Error|error:" "$RES/$name.log" | cut -c1-220 | tail -12
  tar -czf "$OUT/results.tar.gz" -C "$RES" .
}

# name -> limit (seconds) and arguments; `bash benchmarks/gpu_run.sh [NAME ...]` runs those (default: the first
# three, which with the setup fit one 10-minute command; ResNet50 needs ~5.5 min for 20 epochs on an H200,
# EfficientNetV2B3 ~1 min for its first epoch alone: give each a command of its own).
declare -A LIMIT=([fast_default]=95 [cnn]=65 [fast_wide]=120 [resnet50]=360 [efficientnet]=590)
declare -A ARGS=(
  [fast_default]="--seeds 42"
  [cnn]="--model cnn --per-class 25000 --stored-augment --seeds 42"
  [fast_wide]="--seeds 42 --epochs 30 --batch-size 128 --set stage_filters=[128,256,512] max_parameters=3000000"
  [resnet50]="--model resnet50 --set weights=null --per-class 25000 --stored-augment --seeds 42"
  [efficientnet]="--model efficientnet --set weights=null --per-class 25000 --stored-augment --seeds 42"
)
declare -A NAME=([fast_default]=gpu_fast_default [cnn]=gpu_cnn_seed_recipe [fast_wide]=gpu_fast_wide_30epochs
  [resnet50]=gpu_resnet50_seed_recipe [efficientnet]=gpu_efficientnet_seed_recipe)
set -f  # the arguments hold [..] lists, not file patterns
for key in "${@:-fast_default cnn fast_wide}"; do
  for k in $key; do
    [ -n "${LIMIT[$k]:-}" ] || { say "unknown step $k; steps: ${!LIMIT[*]}"; exit 2; }
    # shellcheck disable=SC2086  # the arguments are words on purpose
    step "${NAME[$k]}" "${LIMIT[$k]}" ${ARGS[$k]}
  done
done
say done
