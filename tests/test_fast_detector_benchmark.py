"""Tests for benchmarks/fast_detector.py's training budget (`--train-minutes`: as many epochs as fit)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

from realfake import training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fast_detector  # noqa: E402


def test_training_budget_runs_the_epochs_that_fit_counting_training_time_only():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    budget = fast_detector.TrainingBudget(minutes=0.5)  # 30 s: three 10-s epochs fit exactly, a fourth would not
    budget.set_model(model)
    model.stop_training = False
    epochs = 0
    while not model.stop_training and epochs < 10:
        # validation time is not in train_seconds, so it does not count, however long
        budget.on_epoch_end(epochs, {"train_seconds": 10.0, "val_loss": 1.0})
        epochs += 1
    assert epochs == 3
    assert budget.spent == 30


def test_training_budget_stops_a_real_fit_after_the_first_epoch_when_nothing_more_fits(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    training.compile_classifier(model, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False,
                                label_smoothing=0.0)  # fmt: skip
    images = np.zeros((8, 4, 4, 3), np.uint8)
    data = training.make_dataset(images, np.arange(8) % 2, batch_size=4, shuffle=False, seed=0, augment=(),
                                 max_shift=0)  # fmt: skip
    result = training.fit_classifier(
        model, data, data, epochs=5, state_dir=tmp_path, fingerprint="budget", monitor="val_accuracy", mode="max",
        early_stopping_patience=None, extra_callbacks=[fast_detector.TrainingBudget(minutes=1e-9)],
    )  # fmt: skip
    assert result.epochs_run == 1
