"""Validation rounds shorter than an epoch (`validate_every_steps`): the budget can end inside an epoch, the best
round's weights are kept, the batches are the epoch stream cut anywhere, and an interrupted run resumes exactly."""

import keras
import numpy as np
import pytest
import resume_worker
from test_training import CountBatches, InterruptMidEpoch

from realfake.training.inputs import Batches

STEPS = resume_worker.N_TRAIN // resume_worker.BATCH  # 4 train steps per epoch


def stream_arrays(dataset) -> list[np.ndarray]:
    return [np.asarray(x) for x, _ in dataset]


def test_steps_cut_the_epoch_stream_anywhere():
    train, _ = resume_worker.batches()
    whole = stream_arrays(train.epochs(0, 3))  # 12 batches
    assert len(whole) == 3 * STEPS
    for first, stop in [(0, 5), (3, 9), (5, 12), (10, 14)]:
        cut = stream_arrays(train.steps(first, stop))
        assert len(cut) == stop - first
        for got, want in zip(cut, whole[first:stop], strict=False):  # steps past epoch 3 begin a fourth order
            np.testing.assert_array_equal(got, want)


def test_rounds_validate_every_n_steps_and_keep_the_best_round(tmp_path):
    counter = CountBatches()
    result = resume_worker.fit(tmp_path, [counter], epochs=2, validate_every_steps=2, learning_rate=0.05)
    assert result.history["epoch"] == [1, 2, 3, 4] and counter.batches == 2 * STEPS  # 2 epochs = 4 rounds of 2 steps
    best = 1 + int(np.argmax(result.history["val_accuracy"]))
    assert result.best_epoch == best
    np.testing.assert_allclose(
        result.history["train_images_per_s"], 2 * resume_worker.BATCH / np.array(result.history["train_seconds"])
    )
    _, val = resume_worker.batches()
    accuracy = result.model.evaluate(val.once(), return_dict=True, verbose=0)["accuracy"]
    assert accuracy == pytest.approx(result.history["val_accuracy"][best - 1])


def test_rounds_that_do_not_divide_the_epochs_run_whole_rounds():
    from realfake.training.fit import _rounds

    assert _rounds(2, STEPS, 3) == (3, 3)  # 8 steps in rounds of 3: 9 steps
    assert _rounds(2, STEPS, None) == (STEPS, 2) == _rounds(2, STEPS, STEPS) == _rounds(2, STEPS, 99)


def test_the_budget_ends_training_inside_the_first_epoch(tmp_path):
    counter = CountBatches()
    result = resume_worker.fit(tmp_path, [counter], epochs=3, validate_every_steps=1, max_train_minutes=1e-6)
    assert result.stopped_by_budget and result.epochs_run == 1 and counter.batches == 1  # 1 step of a 4-step epoch
    with pytest.raises(ValueError, match="validate_every_steps: must be > 0"):
        resume_worker.fit(tmp_path / "zero", epochs=1, validate_every_steps=0)


def test_an_interrupted_run_of_rounds_resumes_as_if_uninterrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # at step 5: inside round 3 of rounds of 2 steps
        resume_worker.fit(tmp_path / "cut", [InterruptMidEpoch()], validate_every_steps=2)
    counter = CountBatches()
    resumed = resume_worker.fit(tmp_path / "cut", [counter], validate_every_steps=2)
    whole = resume_worker.fit(tmp_path / "whole", validate_every_steps=2)
    assert counter.start_iterations == 4 and resumed.resumed_epochs == 2  # rounds 1-2 kept, round 3 redone
    assert resumed.history["epoch"] == whole.history["epoch"] == list(range(1, 9))
    for column in ("loss", "val_loss", "val_accuracy"):
        assert resumed.history[column] == whole.history[column], column
    for mine, theirs in zip(resumed.model.weights, whole.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_rounds_need_the_tensorflow_backend(monkeypatch):
    train, _ = resume_worker.batches()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="TensorFlow backend"):
        Batches.steps(train, 0, 2)
