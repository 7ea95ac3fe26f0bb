"""Tests for benchmarks/fast_detector.py's training budget (`--train-minutes`: as many epochs as fit)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fast_detector  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epochs(budget: fast_detector.TrainingBudget, clock: FakeClock, *, epochs: int, train_s: float, val_s: float):
    """Drive the callback's hooks as fit does; return the number of epochs run."""
    for epoch in range(epochs):
        budget.on_epoch_begin(epoch)
        clock.now += train_s
        budget.on_test_begin()
        clock.now += val_s
        budget.on_epoch_end(epoch)
        if budget.model.stop_training:
            return epoch + 1
    return epochs


def test_training_budget_runs_the_epochs_that_fit_counting_training_time_only(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(fast_detector.time, "perf_counter", clock)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    budget = fast_detector.TrainingBudget(minutes=0.5)  # 30 s: three 10-s epochs fit exactly, a fourth would not
    budget.set_model(model)
    model.stop_training = False
    assert run_epochs(budget, clock, epochs=10, train_s=10, val_s=50) == 3
    assert budget.spent == 30


def test_training_budget_stops_a_real_fit_after_the_first_epoch_when_nothing_more_fits():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 2), np.float32)
    history = model.fit(
        x, x[:, :1], validation_data=(x, x[:, :1]), epochs=5, verbose=0,
        callbacks=[fast_detector.TrainingBudget(minutes=1e-9)],
    )  # fmt: skip
    assert len(history.history["loss"]) == 1
