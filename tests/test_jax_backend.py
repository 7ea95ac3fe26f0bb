"""Training under Keras' JAX backend, in a subprocess (KERAS_BACKEND is read once per process).

A GPU host may have JAX and no TensorFlow; `benchmarks/gpu_run.sh` runs this file there before a recipe.
The project's dev install brings JAX (CPU), so it runs everywhere the tests run; TensorFlow, installed
here too, is hidden from the subprocess, as on those machines. This file must not import TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

JAX_TRAINING = """
import sys


class NoTensorFlow:  # the GPU machines have no TensorFlow; where it is installed, hide it (Keras imports it if found)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ImportError("TensorFlow is hidden from this test")


sys.meta_path.insert(0, NoTensorFlow())
import numpy as np
from realfake.data.perturb import Degradation
from realfake.data.prepare import Split
from realfake.params import FastParams, TrainParams
from realfake.training import classifiers, distribute

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
labels = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)
names = ("REAL", "FAKE")
spec = FastParams(architecture="fast", epochs=2, batch_size=16, optimizer="adamw", learning_rate=0.003,
                  schedule="warmup_cosine", warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
                  augment=("hflip",), max_shift=1, space_to_depth=2, stage_filters=(8, 16), convs_per_stage=1,
                  dropout=0.1, flip_tta=True, tta_max_shift=1, max_parameters=100000, jit_compile="auto",
                  degrade=(Degradation("jpeg", 0.5, (50, 90)), Degradation("noise", 0.5, (1.0, 4.0))),
                  max_train_minutes=60.0, validate_every_steps=None, test_curve=True)
train_params = TrainParams(strategy="auto", monitor="val_accuracy", monitor_mode="max",
                           early_stopping_patience=None, run_eagerly=False)
result, _ = classifiers.train_classifier(
    "fast", spec, train_params, Split(images[:64], labels[:64], names), Split(images[64:80], labels[64:80], names),
    seed=1, state_root=sys.argv[1], test=Split(images[80:], labels[80:], names))
assert result.epochs_run == 2 and result.model.jit_compile is True, result
assert all(seconds > 0 for seconds in result.history["train_seconds"])
assert len(result.history["test_accuracy"]) == 2 and not result.stopped_by_budget, result.history
try:
    distribute.distribution_strategy("mirrored")
except ValueError as exc:
    assert "TensorFlow backend" in str(exc)
else:
    raise AssertionError("mirrored was accepted under JAX")
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
print("trained under", __import__("keras").backend.backend())
"""


def test_classifiers_train_under_keras_jax_backend_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    src = str(Path(__file__).resolve().parents[1] / "src")  # where realfake is not installed (the GPU machine)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", JAX_TRAINING, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained under jax" in done.stdout
