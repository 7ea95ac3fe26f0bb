#!/usr/bin/env bash
# Run a recipe on a GPU host that has CUDA and JAX but neither TensorFlow nor network, through the pipeline's own
# stage scripts (python -m realfake.pipeline.runner: no DVC, no MLflow) under Keras' JAX backend.
#
# Prepare on a machine with network: `make gpu-prep` (wheels into .whl/, the packed archive into .gpu/).
# Then, on the GPU host, in a copy of the repository that carries .whl/ and .gpu/:
#   bash benchmarks/gpu_run.sh fast-gpu [--set base.seed=1 ...]
# Outputs land where `dvc repro` puts them (models/, metrics/, plots/); $OUT/results.tar.gz bundles the metrics.
set -u
recipe=${1:?usage: gpu_run.sh RECIPE [--set KEY=VALUE ...]}
shift
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
say() { echo "[$(date +%T)] $*"; }

if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax}
export REALFAKE_PYTHON=${REALFAKE_PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null

missing=$(python3 - <<'PY'
import importlib
need = ["keras", "jax", "numpy", "PIL", "sklearn", "scipy", "matplotlib", "ruamel.yaml", "wrapt", "tqdm"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then say "missing Python packages on this host: $missing (add their wheels to .whl/)"; exit 1; fi

# one real train step proves Keras runs on this backend here
python3 -c 'import keras, numpy as np
m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
m.compile("adam", "binary_crossentropy")
m.fit(np.zeros((64, 8), "float32"), np.zeros(64, "int32"), batch_size=32, verbose=0)
print("keras", keras.__version__, "on", keras.backend.backend(), "ok")' || exit 1
python3 -m pytest -q -p no:cacheprovider tests/test_jax_backend.py || exit 1

if [ ! -f data/cifake.zip ]; then
  mkdir -p data
  python3 benchmarks/ship_archive.py unpack .gpu/cifake-large.jpgs.xz data/cifake.zip || exit 1
fi
say "recipe $recipe"
python3 -m realfake.pipeline.runner --recipe "$recipe" "$@" 2>&1 | tee "$OUT/$recipe.log"
status=${PIPESTATUS[0]}
tar -czf "$OUT/results.tar.gz" metrics plots/train "$OUT/$recipe.log" 2>/dev/null
say "recipe $recipe: exit $status"
exit "$status"
