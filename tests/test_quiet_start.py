"""TensorFlow starts quietly after `import realfake`: its C++ start-up lines (absl's "before InitializeLog" warning,
oneDNN and CUDA notices, a cuInit error without a GPU) are silenced, unless REALFAKE_NATIVE_LOGS=1."""

import os
import subprocess
import sys

NATIVE_MARKERS = ("InitializeLog", "oneDNN", "cuda", "cuInit", "cpu_feature_guard")
SCRIPT = """
import realfake
import keras, numpy as np
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
print(float(model.predict(np.zeros((2, 4)), verbose=0).sum()))
"""


def start(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("REALFAKE_NATIVE_LOGS", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=clean | env, capture_output=True, text=True, timeout=120)


def test_tensorflow_imported_after_realfake_prints_no_native_start_up_lines():
    done = start()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.0"
    assert not [m for m in NATIVE_MARKERS if m.lower() in done.stderr.lower()], done.stderr


def test_native_lines_show_on_request():
    done = start(REALFAKE_NATIVE_LOGS="1", TF_CPP_MIN_LOG_LEVEL="0")
    assert done.returncode == 0, done.stderr
    assert [m for m in NATIVE_MARKERS if m.lower() in done.stderr.lower()], "the first test would prove nothing"
