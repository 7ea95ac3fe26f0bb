"""Tests for realfake.training: the input pipelines (inputs), optimizers and compiling (optim), distribution
strategies (distribute) and the resumable, validation-selected fit (fit, state)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import typing
from pathlib import Path

import keras
import numpy as np
import pytest
import resume_worker
import tensorflow as tf

from realfake.data.perturb import Degradation
from realfake.params import Augmentation, Optimizer, Schedule
from realfake.training import distribute, optim
from realfake.training.fit import TestCurve
from realfake.training.inputs import ArrayBatches, Batches, FollowEpochs
from realfake.training.seeding import seed_everything
from realfake.training.state import BACKUP, BACKUP_COMMIT, PROGRESS, StateInUseError, locked_state

WORKER = Path(__file__).with_name("resume_worker.py")


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a square image: 4 quarter turns of it and of its mirror image."""
    return [np.rot90(base, k) for base in (image, image[:, ::-1]) for k in range(4)]


# tf.data under Keras' TensorFlow backend; ArrayBatches (NumPy) under the others, tested here under TensorFlow
PIPELINES = ("tf.data", "numpy")


def epoch_batches(spec: Batches, kind: str, epoch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches of `epoch` (0-based) as NumPy arrays, from the tf.data stream or from an ArrayBatches."""
    if kind == "numpy":
        ds = ArrayBatches(spec)
        ds.set_epoch(epoch)  # what FollowEpochs does at fit's epoch start
        return [ds[i] for i in range(len(ds))]
    return [(x.numpy(), y.numpy()) for x, y in spec.epochs(epoch, epoch + 1)]


def epoch_arrays(spec: Batches, kind: str, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*epoch_batches(spec, kind, epoch), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def numpy_pipeline(monkeypatch):
    """fit_classifier through ArrayBatches, as under Keras' JAX or PyTorch backend; yields the ArrayBatches made."""
    made = []

    def epochs(self, first, stop):
        made.append(ArrayBatches(self))
        return made[-1]

    monkeypatch.setattr(Batches, "epochs", epochs)
    return made


class CountBatches(keras.callbacks.Callback):
    """Records which epochs ran (0-based) and how many train batches; optionally freezes the weights."""

    def __init__(self, freeze: bool = False):
        super().__init__()
        self.freeze, self.epochs, self.batches, self.start_iterations = freeze, [], 0, None

    def on_train_begin(self, logs=None):
        # The backup is restored before fit() starts: this sees the restored optimizer step count.
        self.start_iterations = int(self.model.optimizer.iterations)
        if self.freeze:
            self.model.optimizer.learning_rate = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


# ----------------------------------------------------------------------------- inputs: Batches, ArrayBatches


@pytest.mark.parametrize("kind", PIPELINES)
def test_batches_are_float_pixels_and_int_labels_covering_every_image_once(images, kind):
    spec = Batches(images, np.arange(100), batch_size=32, shuffle=True, seed=1, augment=("hflip", "rot90"))
    assert spec.steps_per_epoch == 4
    batches = epoch_batches(spec, kind)
    dtypes = {(keras.backend.standardize_dtype(x.dtype), keras.backend.standardize_dtype(y.dtype)) for x, y in batches}
    assert dtypes == {("float32", "int32")}
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in batches]
    assert shapes == [((32, 32, 32, 3), (32,))] * 3 + [((4, 32, 32, 3), (4,))]
    for epoch in range(2):
        x, y = epoch_arrays(spec, kind, epoch)
        assert sorted(y) == list(range(100))
        assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))


def test_batches_are_tf_data_under_the_tensorflow_backend(images):
    spec = Batches(images, np.arange(100), batch_size=8)
    assert isinstance(spec.epochs(0, 2), tf.data.Dataset) and isinstance(spec.once(), tf.data.Dataset)
    assert spec.epochs(1, 4).cardinality() == 3 * spec.steps_per_epoch  # one stream of the epochs asked for


def test_a_stream_started_at_any_epoch_is_the_tail_of_an_uninterrupted_one(images):
    # What an exact resume rests on: every batch is a function of (seed, epoch, step), shuffle, flips, shifts and
    # degradations alike, not of where the stream started or of the global random state.
    spec = Batches(images, np.arange(100), batch_size=30, seed=4, shuffle=True, augment=("hflip",), max_shift=1,
                   degrade=(Degradation("noise", 0.5, (2.0, 6.0)),))  # fmt: skip
    seed_everything(0)
    whole = [(x.numpy(), y.numpy()) for x, y in spec.epochs(0, 3)]
    seed_everything(1)
    tail = [(x.numpy(), y.numpy()) for x, y in spec.epochs(2, 3)]
    assert len(whole) == 3 * spec.steps_per_epoch and len(tail) == spec.steps_per_epoch
    for (x, y), (x_again, y_again) in zip(whole[-len(tail) :], tail, strict=True):
        np.testing.assert_array_equal(x_again, x)
        np.testing.assert_array_equal(y_again, y)


@pytest.mark.parametrize("kind", PIPELINES)
def test_shuffle_changes_every_epoch_and_repeats_for_the_same_seed(images, kind):
    def orders(seed: int, global_seed: int) -> list[list[int]]:
        seed_everything(global_seed)  # the order must not depend on it
        spec = Batches(images, np.arange(100), batch_size=16, shuffle=True, seed=seed)
        return [epoch_arrays(spec, kind, epoch)[1].tolist() for epoch in range(2)]

    first, again, other = orders(1, 0), orders(1, 5), orders(2, 0)
    assert first[0] != first[1]
    assert first == again
    assert first[0] != other[0]


@pytest.mark.parametrize("kind", PIPELINES)
def test_eval_batches_keep_order_and_pixels(images, kind):
    spec = Batches(images, np.arange(100), batch_size=30)
    for epoch in range(2):
        x, y = epoch_arrays(spec, kind, epoch)
        assert y.tolist() == list(range(100))
        np.testing.assert_array_equal(x, images.astype(np.float32))


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize(
    ("augment", "allowed"),
    [(("hflip",), {0, 4}), (("rot90",), {0, 1, 2, 3}), (("hflip", "rot90"), set(range(8)))],
)
def test_augmentation_only_flips_and_rotates(images, augment, allowed, kind):
    spec = Batches(images, np.arange(100), batch_size=25, shuffle=True, seed=3, augment=augment)
    seen = set()
    for epoch in range(2):
        x, y = epoch_arrays(spec, kind, epoch)
        for image, source in zip(x.astype(np.uint8), y, strict=True):
            matches = [i for i, t in enumerate(dihedral(images[source])) if np.array_equal(image, t)]
            assert matches, f"image {source} is not a flip/rotation of its source"
            seen.add(matches[0])  # random noise images have no symmetry, so the match is unique
    assert seen == allowed


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` moved so that output pixel (r, c) shows source pixel (r + dy, c + dx), mirrored at the borders."""
    m = max(abs(dy), abs(dx))
    height, width = image.shape[:2]
    padded = np.pad(image, ((m, m), (m, m), (0, 0)), mode="reflect")
    return padded[m + dy : m + dy + height, m + dx : m + dx + width]


@pytest.mark.parametrize("kind", PIPELINES)
def test_shifts_move_whole_pixels_by_up_to_max_shift_after_the_flip(images, kind):
    spec = Batches(images, np.arange(100), batch_size=25, shuffle=True, seed=3, augment=("hflip",), max_shift=2)
    seen = set()
    for epoch in range(3):
        x, y = epoch_arrays(spec, kind, epoch)
        for image, source in zip(x.astype(np.uint8), y, strict=True):
            matches = [
                (flip, dy, dx)
                for flip, base in enumerate((images[source], images[source][:, ::-1]))
                for dy in range(-2, 3)
                for dx in range(-2, 3)
                if np.array_equal(image, shifted(base, dy, dx))
            ]
            assert len(matches) == 1, f"image {source} is not one flip-and-shift of its source: {matches}"
            seen.add(matches[0])
    assert {flip for flip, _, _ in seen} == {0, 1}
    assert {dy for _, dy, _ in seen} == {dx for _, _, dx in seen} == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize("max_shift", [-1, 32])
def test_max_shift_must_leave_part_of_the_image(images, max_shift):
    with pytest.raises(ValueError, match=rf"max_shift: must be in \[0, 32\) pixels, got {max_shift}"):
        Batches(images, np.arange(100), batch_size=8, shuffle=True, max_shift=max_shift)


def test_every_allowed_augmentation_runs(images):
    """params.Augmentation is the one list of names (checked when params.yaml loads); each one works here."""
    batches = Batches(images, np.arange(100), batch_size=8, augment=typing.get_args(Augmentation), shuffle=True)
    assert batches.augment == ("rot90", "hflip")


def test_rot90_needs_square_images():
    wide = np.zeros((4, 8, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="rot90 needs square images, got 8x16"):
        Batches(wide, np.arange(4), batch_size=2, augment=("rot90",))


@pytest.mark.parametrize(
    ("images", "labels", "batch_size", "degrade", "message"),
    [
        (np.zeros((4, 32, 32, 3), np.float32), np.arange(4), 2, (), "expected a uint8 array"),
        (np.zeros((4, 32, 32), np.uint8), np.arange(4), 2, (), "expected a uint8 array"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), 0, (), "batch_size: must be > 0"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.arange(3), 2, (), "3 labels for 4 images"),
        (np.zeros((0, 32, 32, 3), np.uint8), np.arange(0), 2, (), "no images"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), 2, (Degradation("jpeg", 1.5, (30, 90)),), "probability"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), 2, (Degradation("jpeg", 0.5, (30, 99)),), "1..95"),
    ],
)
def test_bad_inputs_are_refused(images, labels, batch_size, degrade, message):
    with pytest.raises(ValueError, match=message):
        Batches(images, labels, batch_size=batch_size, degrade=degrade)


def test_numpy_batches_are_a_function_of_epoch_and_index(images):
    def batches(epoch: int) -> ArrayBatches:
        ds = ArrayBatches(Batches(images, np.arange(100), batch_size=10, shuffle=True, seed=5, augment=("hflip",),
                                  degrade=(Degradation("blur", 0.5, (0.5, 1.0)),)))  # fmt: skip
        ds.set_epoch(epoch)
        return ds

    a, b = batches(3), batches(3)
    x, y = a[4]
    np.testing.assert_array_equal(b[4][0], x)  # another instance, same (epoch, index)
    a[0], a[7]  # out of order, as Keras may fetch
    np.testing.assert_array_equal(a[4][0], x)
    assert not np.array_equal(batches(4)[4][1], y)  # the next epoch draws another order
    with pytest.raises(IndexError):
        a[len(a)]


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self, dataset: ArrayBatches | None = None):
        super().__init__()
        self.dataset, self.seen = dataset, []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.seen.append(self.dataset.epoch)


def test_numpy_batches_follow_fits_epoch_numbers_also_after_a_resume(tmp_path, numpy_pipeline):
    # Keras also starts an epoch of the data to build the model; fit's own numbering must win, and a fit that
    # resumes at epoch 2 must draw epoch 2's order, not the first one again.
    recorder = RecordEpochs()

    class Attach(keras.callbacks.Callback):  # the ArrayBatches exists once fit_classifier has made it
        def on_train_begin(self, logs=None):
            recorder.dataset = numpy_pipeline[0]

    resume_worker.fit(tmp_path, [Attach(), recorder], epochs=2)
    assert recorder.seen == [0, 1]
    train = ArrayBatches(resume_worker.batches()[0])
    model = resume_worker.compiled_model(learning_rate=0.01)
    resumed = RecordEpochs(train)
    model.fit(train, epochs=4, initial_epoch=2, callbacks=[FollowEpochs(train), resumed], verbose=0)
    assert resumed.seen == [2, 3]


def test_pipeline_holds_no_float32_copy_of_the_data():
    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    n = 50_000  # 150 MB as uint8; a float32 copy would add 600 MB
    big = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    spec = Batches(big, np.zeros(n), batch_size=500, shuffle=True, augment=("hflip", "rot90"))
    before = rss_mb()
    seen = sum(int(y.shape[0]) for _, y in spec.epochs(0, 1))
    assert seen == n
    assert rss_mb() - before < 150


# ----------------------------------------------------------------------------- optimizers, compile, strategy


@pytest.mark.parametrize("name", typing.get_args(Optimizer))  # params.Optimizer: the one list of names
def test_build_optimizer(name):
    optimizer = optim.build_optimizer(name, learning_rate=0.002, weight_decay=0.0)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.002)
    assert not optimizer.weight_decay  # 0 switches decay off, even AdamW's own default of 0.004


def test_every_allowed_schedule_builds():
    """params.Schedule is the one list of names; each has its implementation."""
    for name in typing.get_args(Schedule):
        optim.learning_rate_schedule(name, learning_rate=0.01, warmup_epochs=0, epochs=5, steps_per_epoch=10)


def test_weight_decay_spares_batchnorm_and_biases():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="dense"), keras.layers.BatchNormalization(name="bn")]
    )
    for variable in model.trainable_variables:
        variable.assign(keras.ops.ones_like(variable))
    optimizer = optim.build_optimizer("sgd", learning_rate=0.5, weight_decay=0.1)
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    after = {v.path.split("/")[-1]: float(keras.ops.max(v)) for v in model.trainable_variables}
    # zero gradients: only decay moves a variable, by lr * decay = 0.05 of its value
    assert after == {"kernel": pytest.approx(0.95), "bias": 1.0, "gamma": 1.0, "beta": 1.0}


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    schedule = optim.learning_rate_schedule(
        "warmup_cosine", learning_rate=0.01, warmup_epochs=1, epochs=5, steps_per_epoch=10
    )
    rates = [float(schedule(step)) for step in range(51)]
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.005) and rates[10] == pytest.approx(0.01)
    assert max(rates) == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # monotone decay after warmup
    assert rates[30] == pytest.approx(0.005, rel=1e-5)  # halfway through the 40 decay steps: cos(pi/2)
    assert rates[50] == pytest.approx(0.0, abs=1e-9)
    assert optim.learning_rate_schedule("constant", learning_rate=0.01, warmup_epochs=0, epochs=5,
                                        steps_per_epoch=10) == 0.01  # fmt: skip


def test_label_smoothing_pulls_binary_targets_towards_half():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    optim.compile_classifier(
        model, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False, label_smoothing=0.2
    )
    y_true, y_pred = np.array([[1.0]]), np.array([[0.9]])
    # target 1 smoothed by 0.2 -> 0.9: loss = -(0.9 log 0.9 + 0.1 log 0.1)
    expected = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert float(model.loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    softmax = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="label_smoothing needs a one-unit sigmoid"):
        optim.compile_classifier(
            softmax, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False, label_smoothing=0.1
        )


@pytest.mark.parametrize(
    ("units", "loss", "metric"),
    [
        (1, keras.losses.BinaryCrossentropy, "BinaryAccuracy"),
        (3, keras.losses.SparseCategoricalCrossentropy, "SparseCategoricalAccuracy"),
    ],
)
def test_compile_classifier_picks_loss_from_output_units(images, units, loss, metric):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(units)])
    optim.compile_classifier(
        model, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False, label_smoothing=0.0
    )
    assert isinstance(model.loss, loss)
    batches = Batches(images, np.arange(100) % 2, batch_size=50)
    logs = model.evaluate(batches.once(), return_dict=True, verbose=0)  # integer labels work with either loss
    assert set(logs) == {"loss", "accuracy"}
    assert type(model.metrics[-1].metrics[0]).__name__ == metric


def test_distribution_strategy():
    assert distribute.distribution_strategy("default").num_replicas_in_sync == 1
    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert not isinstance(distribute.distribution_strategy("auto"), tf.distribute.MirroredStrategy)
    assert isinstance(distribute.distribution_strategy("mirrored"), tf.distribute.MirroredStrategy)


# ----------------------------------------------------------------------------- fit_classifier


def fit(state_dir: Path, *, epochs: int, learning_rate: float, callbacks=(), monitor: str = "val_loss",
        mode: str = "min", patience: int | None = None, fingerprint: str = "fp", **settings):  # fmt: skip
    """The resume worker's tiny run (shuffle, flips, 1-px shifts, degradations, dropout) with these settings."""
    return resume_worker.fit(
        state_dir, callbacks, learning_rate=learning_rate, epochs=epochs, monitor=monitor, mode=mode,
        early_stopping_patience=patience, fingerprint=fingerprint, **settings,
    )  # fmt: skip


@pytest.mark.parametrize("kind", PIPELINES)
def test_fit_returns_the_best_validation_epoch_and_reuses_a_finished_state(tmp_path, caplog, request, kind):
    if kind == "numpy":
        request.getfixturevalue("numpy_pipeline")
    # Selecting the HIGHEST val_loss makes the best epoch an early one (the loss falls while training), so the
    # check below can tell the best epoch's weights from the last epoch's.
    result = fit(tmp_path, epochs=4, learning_rate=0.05, mode="max")
    val_loss = result.history["val_loss"]
    assert result.history["epoch"] == [1, 2, 3, 4] and result.epochs_run == 4
    assert result.best_epoch == 1 + int(np.argmax(val_loss)) < 4
    assert result.best_metrics["val_loss"] == val_loss[result.best_epoch - 1]
    assert not result.stopped_early and not result.stopped_by_budget and result.resumed_epochs == 0
    _, val = resume_worker.batches()
    evaluated = result.model.evaluate(val.once(), return_dict=True, verbose=0)["loss"]
    assert evaluated == pytest.approx(max(val_loss), rel=1e-5) and evaluated != pytest.approx(val_loss[-1])
    speeds = np.array(result.history["train_images_per_s"])
    np.testing.assert_allclose(speeds, resume_worker.N_TRAIN / np.array(result.history["train_seconds"]))
    assert result.train_seconds == pytest.approx(sum(result.history["train_seconds"]))
    assert result.history["train_minutes"][-1] == pytest.approx(result.train_seconds / 60, abs=1e-3)  # cumulative
    assert [p.name for p in tmp_path.glob("best-*")] == [f"best-epoch{result.best_epoch:04d}.weights.h5"]
    assert not (tmp_path / BACKUP).exists()

    again_counter = CountBatches()
    again = fit(tmp_path, epochs=4, learning_rate=0.05, mode="max", callbacks=[again_counter])
    assert again_counter.batches == 0 and again.history == result.history and again.resumed_epochs == 4

    with caplog.at_level(logging.WARNING, logger="realfake.training.state"):
        fresh = fit(tmp_path, epochs=1, learning_rate=0.05, fingerprint="other params")
    assert "starting over" in caplog.text and fresh.history["epoch"] == [1]


def test_early_stopping_counts_epochs_without_improvement(tmp_path):
    counter = CountBatches(freeze=True)  # learning rate 0: no epoch after the first can improve
    result = fit(tmp_path, epochs=5, learning_rate=0.01, patience=2, callbacks=[counter])
    assert result.stopped_early and not result.stopped_by_budget and result.best_epoch == 1
    assert result.history["epoch"] == [1, 2, 3] and counter.epochs == [0, 1, 2]


@pytest.mark.parametrize("monitor", ["loss", "test_accuracy"])
def test_monitor_must_be_a_validation_metric(tmp_path, monitor):
    with pytest.raises(ValueError, match="validation"):
        fit(tmp_path, epochs=1, learning_rate=0.01, monitor=monitor)


def test_a_time_budget_stops_after_the_first_epoch_and_a_rerun_returns_the_result(tmp_path):
    result = fit(tmp_path / "tiny", epochs=4, learning_rate=0.01, max_train_minutes=1e-6)
    assert result.stopped_by_budget and not result.stopped_early
    assert result.history["epoch"] == [1] and result.epochs_run == 1 and result.best_epoch == 1
    counter = CountBatches()
    again = fit(tmp_path / "tiny", epochs=4, learning_rate=0.01, max_train_minutes=1e-6, callbacks=[counter])
    assert counter.batches == 0 and again.history == result.history and again.stopped_by_budget

    ample = fit(tmp_path / "ample", epochs=2, learning_rate=0.01, max_train_minutes=60)
    assert ample.epochs_run == 2 and not ample.stopped_by_budget
    with pytest.raises(ValueError, match="max_train_minutes: must be > 0"):
        fit(tmp_path / "zero", epochs=4, learning_rate=0.01, max_train_minutes=0)


def test_the_test_curve_is_reported_but_never_selects(tmp_path):
    rng = np.random.default_rng(11)
    test_images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    test_labels = (test_images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)
    curve = TestCurve(test_images, test_labels, batch_size=16)
    settings = dict(epochs=2, learning_rate=0.05, monitor="val_accuracy", mode="max")
    result = fit(tmp_path / "curve", test_curve=curve, **settings)
    plain = fit(tmp_path / "plain", **settings)

    for column in ("test_accuracy", "test_roc_auc"):
        assert len(result.history[column]) == 2 and all(0 <= v <= 1 for v in result.history[column])
        assert column not in plain.history
    assert not [k for k in result.best_metrics if k.startswith("test_")]
    assert set(result.best_metrics) == set(plain.best_metrics)
    # The curve only watches: the training and its selection are those of a run without it.
    for column in ("loss", "val_loss", "val_accuracy"):
        assert result.history[column] == plain.history[column]
    assert result.best_epoch == plain.best_epoch
    # Each point scores that epoch's weights: the returned model (best epoch) scores its epoch's point again.
    p_fake = result.model.predict(test_images, verbose=0)[:, 0]
    best = result.best_epoch - 1
    assert result.history["test_accuracy"][best] == pytest.approx(np.mean((p_fake >= 0.5) == test_labels))


def test_a_second_fit_on_a_state_folder_in_use_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "marker").write_text("written by the training that holds the lock")
    held, release = threading.Event(), threading.Event()

    def hold():
        with locked_state(state):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(StateInUseError) as refused:
            fit(state, epochs=1, learning_rate=0.01, fingerprint="another training")
    finally:
        release.set()
        holder.join()
    message = str(refused.value)
    assert str(state) in message and f"in use by process {os.getpid()}" in message
    assert (state / "marker").exists(), "the refused fit touched the folder (another fingerprint wipes it)"

    result = fit(state, epochs=1, learning_rate=0.01, fingerprint="another training")  # released: free again
    assert result.epochs_run == 1 and not (state / "marker").exists()


@pytest.fixture(scope="module")
def killed_after_epoch_1(tmp_path_factory) -> Path:
    """The state folder of resume_worker.py run as a process that SIGTERMs itself once epoch 1 is backed up."""
    state = tmp_path_factory.mktemp("killed") / "state"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, str(WORKER), str(state)], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    return state


def copy_of(state: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(state, tmp_path / "state"))


def test_resume_after_sigterm_continues_with_the_next_epoch(killed_after_epoch_1, tmp_path):
    state = copy_of(killed_after_epoch_1, tmp_path)
    before = json.loads((state / PROGRESS).read_text())
    assert [e["epoch"] for e in before["history"]] == [1] and before["best_epoch"] == 1

    counter = CountBatches(freeze=True)  # later epochs can then only tie epoch 1, never beat it
    result = resume_worker.fit(state, [counter])
    steps = resume_worker.N_TRAIN // resume_worker.BATCH
    assert counter.start_iterations == steps  # weights and optimizer state came from the backup
    assert counter.epochs == [1, 2, 3] and counter.batches == 3 * steps  # epoch 1 was not retrained
    assert result.history["epoch"] == [1, 2, 3, 4] and result.resumed_epochs == 1
    assert result.history["val_loss"][0] == before["history"][0]["val_loss"]  # carried over, not recomputed
    # Frozen weights restored from the backup score exactly what epoch 1 scored (a restart would not).
    assert result.history["val_loss"][1:] == pytest.approx([before["history"][0]["val_loss"]] * 3, rel=1e-5)
    # The best-so-far survived: a forgetful run would have called its own first epoch (2) the best.
    assert result.best_epoch == 1
    assert result.best_metrics["val_accuracy"] == before["history"][0]["val_accuracy"]


def test_a_run_resumed_after_sigterm_equals_an_uninterrupted_one(killed_after_epoch_1, tmp_path):
    # Shuffle, flips, shifts, degradations, dropout masks, weights and optimizer: all must continue exactly.
    resumed = resume_worker.fit(copy_of(killed_after_epoch_1, tmp_path))
    whole = resume_worker.fit(tmp_path / "uninterrupted")
    assert resumed.resumed_epochs == 1 and whole.resumed_epochs == 0
    assert resumed.history["epoch"] == whole.history["epoch"] == [1, 2, 3, 4]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert resumed.history[column] == whole.history[column], column
    assert resumed.best_epoch == whole.best_epoch
    for mine, theirs in zip(resumed.model.weights, whole.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


class InterruptMidEpoch(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (what SIGINT does) in the middle of the second epoch."""

    def on_train_batch_begin(self, batch, logs=None):
        if self.model.optimizer.iterations >= 5:
            raise KeyboardInterrupt


def test_resume_after_keyboard_interrupt_drops_an_unbacked_epoch_record(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        resume_worker.fit(tmp_path, [InterruptMidEpoch()])
    progress = json.loads((tmp_path / PROGRESS).read_text())
    assert [e["epoch"] for e in progress["history"]] == [1]
    # Pretend the process died after recording epoch 2 but before Keras backed it up: epoch 2 must be redone
    # and its orphaned record and best weights dropped, falling back to epoch 1.
    progress["history"].append({**progress["history"][0], "epoch": 2, "val_accuracy": 2.0})
    progress["best_epoch"] = 2
    (tmp_path / PROGRESS).write_text(json.dumps(progress))
    (tmp_path / "best-epoch0002.weights.h5").write_bytes(b"orphan")

    counter = CountBatches(freeze=True)
    result = resume_worker.fit(tmp_path, [counter])
    assert counter.epochs == [1, 2, 3]
    assert result.history["epoch"] == [1, 2, 3, 4] and max(result.history["val_accuracy"]) <= 1
    assert result.best_epoch == 1


@pytest.mark.parametrize("dies_in_epoch", [1, 2])
def test_a_kill_while_the_backup_is_written_resumes_from_the_last_committed_epoch(tmp_path, monkeypatch, dies_in_epoch):
    """What failed in CI with Keras' BackupAndRestore: SIGTERM while the first backup was half written."""
    save_weights = keras.Model.save_weights

    def dies_half_way(self, filepath, *args, **kwargs):
        if Path(filepath).parent.name == BACKUP and f"epoch{dies_in_epoch:04d}" in Path(filepath).name:
            Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n cut off")
            raise KeyboardInterrupt
        save_weights(self, filepath, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(keras.Model, "save_weights", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            resume_worker.fit(tmp_path)
    assert [e["epoch"] for e in json.loads((tmp_path / PROGRESS).read_text())["history"]] == list(
        range(1, dies_in_epoch + 1)
    )
    if dies_in_epoch > 1:
        assert json.loads((tmp_path / BACKUP / BACKUP_COMMIT).read_text())["epoch"] == dies_in_epoch - 1

    counter = CountBatches()
    result = resume_worker.fit(tmp_path, [counter])
    committed = dies_in_epoch - 1
    assert counter.epochs == list(range(committed, resume_worker.EPOCHS))
    assert counter.start_iterations == committed * resume_worker.N_TRAIN // resume_worker.BATCH
    assert result.history["epoch"] == [1, 2, 3, 4] and result.resumed_epochs == committed
    assert not (tmp_path / BACKUP).exists()  # deleted once the fit completed
