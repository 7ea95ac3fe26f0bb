"""Tests for realfake.training: input pipeline, compile helpers and the resumable, validation-selected fit."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import resume_worker
import tensorflow as tf

from realfake import training

WORKER = Path(__file__).with_name("resume_worker.py")


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a square image: 4 quarter turns of it and of its mirror image."""
    return [np.rot90(base, k) for base in (image, image[:, ::-1]) for k in range(4)]


# tf.data under Keras' TensorFlow backend; ArrayBatches (NumPy) under the others, tested here under TensorFlow
PIPELINES = ("tf.data", "numpy")


def pipeline(kind: str, images: np.ndarray, labels: np.ndarray, **settings) -> tf.data.Dataset | training.ArrayBatches:
    make = training.ArrayBatches if kind == "numpy" else training.make_dataset
    return make(images, labels, **{"max_shift": 0, **settings})


def epoch_batches(ds: tf.data.Dataset | training.ArrayBatches) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ds, training.ArrayBatches):
        ds.on_epoch_begin()  # as Keras' fit does at every epoch's start
        batches = [ds[i] for i in range(len(ds))]
    else:
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
    xs, ys = zip(*batches, strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)


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


# ----------------------------------------------------------------------------- make_dataset


@pytest.mark.parametrize("kind", PIPELINES)
def test_dataset_yields_float_batches_covering_every_image_once(images, kind):
    ds = pipeline(kind, images, np.arange(100), batch_size=32, shuffle=True, seed=1, augment=("hflip", "rot90"))
    batches = list(ds) if kind == "tf.data" else [ds[i] for i in range(len(ds))]
    dtypes = {(keras.backend.standardize_dtype(x.dtype), keras.backend.standardize_dtype(y.dtype)) for x, y in batches}
    assert dtypes == {("float32", "int32")}
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in batches]
    assert shapes == [((32, 32, 32, 3), (32,))] * 3 + [((4, 32, 32, 3), (4,))]
    for _ in range(2):
        x, y = epoch_batches(ds)
        assert sorted(y) == list(range(100))
        assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))


def test_make_dataset_is_tf_data_under_the_tensorflow_backend(images):
    ds = training.make_dataset(images, np.arange(100), batch_size=8, shuffle=False, seed=0, augment=(), max_shift=0)
    assert isinstance(ds, tf.data.Dataset)


@pytest.mark.parametrize("kind", PIPELINES)
def test_shuffle_changes_every_epoch_and_repeats_for_the_same_seed(images, kind):
    def orders(seed: int) -> list[list[int]]:
        training.seed_everything(0)
        ds = pipeline(kind, images, np.arange(100), batch_size=16, shuffle=True, seed=seed, augment=())
        return [epoch_batches(ds)[1].tolist() for _ in range(2)]

    first, again, other = orders(1), orders(1), orders(2)
    assert first[0] != first[1]
    assert first == again
    assert first[0] != other[0]


@pytest.mark.parametrize("kind", PIPELINES)
def test_eval_dataset_keeps_order_and_pixels(images, kind):
    ds = pipeline(kind, images, np.arange(100), batch_size=30, shuffle=False, seed=0, augment=())
    x, y = epoch_batches(ds)
    assert y.tolist() == list(range(100))
    np.testing.assert_array_equal(x, images.astype(np.float32))


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize(
    ("augment", "allowed"),
    [(("hflip",), {0, 4}), (("rot90",), {0, 1, 2, 3}), (("hflip", "rot90"), set(range(8)))],
)
def test_augmentation_only_flips_and_rotates(images, augment, allowed, kind):
    ds = pipeline(kind, images, np.arange(100), batch_size=25, shuffle=True, seed=3, augment=augment)
    seen = set()
    for _ in range(2):
        x, y = epoch_batches(ds)
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
    ds = pipeline(kind, images, np.arange(100), batch_size=25, shuffle=True, seed=3, augment=("hflip",), max_shift=2)
    seen = set()
    for _ in range(3):
        x, y = epoch_batches(ds)
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


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize("max_shift", [-1, 32])
def test_max_shift_must_leave_part_of_the_image(images, kind, max_shift):
    with pytest.raises(ValueError, match=rf"max_shift: must be in \[0, 32\) pixels for these images, got {max_shift}"):
        pipeline(kind, images, np.arange(100), batch_size=8, shuffle=True, seed=0, augment=(), max_shift=max_shift)


@pytest.mark.parametrize("kind", PIPELINES)
def test_unknown_augmentation_is_named(images, kind):
    with pytest.raises(ValueError, match="'zoom'.*hflip"):
        pipeline(kind, images, np.arange(100), batch_size=8, shuffle=False, seed=0, augment=("zoom",))


@pytest.mark.parametrize("kind", PIPELINES)
def test_rot90_needs_square_images(kind):
    wide = np.zeros((4, 8, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="rot90 needs square images, got 8x16"):
        pipeline(kind, wide, np.arange(4), batch_size=2, shuffle=False, seed=0, augment=("rot90",))


def test_numpy_batches_are_a_function_of_epoch_and_index(images):
    def batches(epoch: int) -> training.ArrayBatches:
        ds = training.ArrayBatches(
            images, np.arange(100), batch_size=10, shuffle=True, seed=5, augment=("hflip",), max_shift=0
        )
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


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize(
    ("images", "batch_size", "message"),
    [
        (np.zeros((4, 32, 32, 3), np.float32), 2, "expected a uint8 array"),
        (np.zeros((4, 32, 32), np.uint8), 2, "expected a uint8 array"),
        (np.zeros((4, 32, 32, 3), np.uint8), 0, "batch_size: must be > 0"),
    ],
)
def test_bad_inputs_are_refused(kind, images, batch_size, message):
    with pytest.raises(ValueError, match=message):
        pipeline(kind, images, np.arange(4), batch_size=batch_size, shuffle=False, seed=0, augment=())


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self, dataset: training.ArrayBatches):
        super().__init__()
        self.dataset, self.seen = dataset, []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.seen.append(self.dataset.epoch)


def test_numpy_batches_follow_fits_epoch_numbers_also_after_a_resume(tmp_path):
    # Keras also starts an epoch of the data to build the model; fit's own numbering must win, and a fit that
    # resumes at epoch 3 must draw epoch 3's order, not the first one again.
    train, val = resume_worker.datasets("numpy")
    recorder = RecordEpochs(train)
    fit(tmp_path, epochs=2, learning_rate=0.01, kind="numpy", callbacks=[recorder], datasets=(train, val))
    assert recorder.seen == [1, 2]
    model = resume_worker.compiled_model(learning_rate=0.01)
    resumed = RecordEpochs(train)
    model.fit(train, epochs=4, initial_epoch=2, callbacks=[training.FollowEpochs(train), resumed], verbose=0)
    assert resumed.seen == [3, 4]


def test_pipeline_holds_no_float32_copy_of_the_data():
    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    n = 50_000  # 150 MB as uint8; a float32 copy would add 600 MB
    big = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    ds = training.make_dataset(
        big, np.zeros(n), batch_size=500, shuffle=True, seed=0, augment=("hflip", "rot90"), max_shift=0
    )
    before = rss_mb()
    seen = sum(int(y.shape[0]) for _, y in ds)
    assert seen == n
    assert rss_mb() - before < 150


# ----------------------------------------------------------------------------- optimizers, compile, strategy


@pytest.mark.parametrize("name", ["adam", "adamax", "adamw", "sgd"])
def test_build_optimizer(name):
    optimizer = training.build_optimizer(name, learning_rate=0.002, weight_decay=0.0)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.002)
    assert not optimizer.weight_decay  # 0 switches decay off, even AdamW's own default of 0.004


def test_build_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="'rmsprop'.*adamax"):
        training.build_optimizer("rmsprop", learning_rate=0.1, weight_decay=0.0)


def test_weight_decay_spares_batchnorm_and_biases():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="dense"), keras.layers.BatchNormalization(name="bn")]
    )
    for variable in model.trainable_variables:
        variable.assign(keras.ops.ones_like(variable))
    optimizer = training.build_optimizer("sgd", learning_rate=0.5, weight_decay=0.1)
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    after = {v.path.split("/")[-1]: float(keras.ops.max(v)) for v in model.trainable_variables}
    # zero gradients: only decay moves a variable, by lr * decay = 0.05 of its value
    assert after == {"kernel": pytest.approx(0.95), "bias": 1.0, "gamma": 1.0, "beta": 1.0}


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    schedule = training.learning_rate_schedule(
        "warmup_cosine", learning_rate=0.01, warmup_epochs=1, epochs=5, steps_per_epoch=10
    )
    rates = [float(schedule(step)) for step in range(51)]
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.005) and rates[10] == pytest.approx(0.01)
    assert max(rates) == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # monotone decay after warmup
    assert rates[30] == pytest.approx(0.005, rel=1e-5)  # halfway through the 40 decay steps: cos(pi/2)
    assert rates[50] == pytest.approx(0.0, abs=1e-9)
    assert training.learning_rate_schedule("constant", learning_rate=0.01, warmup_epochs=0, epochs=5,
                                           steps_per_epoch=10) == 0.01  # fmt: skip
    with pytest.raises(ValueError, match="'linear'.*warmup_cosine"):
        training.learning_rate_schedule("linear", learning_rate=0.01, warmup_epochs=0, epochs=5, steps_per_epoch=10)


def test_label_smoothing_pulls_binary_targets_towards_half():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    training.compile_classifier(
        model, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False, label_smoothing=0.2
    )
    y_true, y_pred = np.array([[1.0]]), np.array([[0.9]])
    # target 1 smoothed by 0.2 -> 0.9: loss = -(0.9 log 0.9 + 0.1 log 0.1)
    expected = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert float(model.loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    softmax = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="label_smoothing needs a one-unit sigmoid"):
        training.compile_classifier(
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
    training.compile_classifier(
        model, optimizer=keras.optimizers.SGD(), jit_compile=False, run_eagerly=False, label_smoothing=0.0
    )
    assert isinstance(model.loss, loss)
    ds = training.make_dataset(
        images, np.arange(100) % 2, batch_size=50, shuffle=False, seed=0, augment=(), max_shift=0
    )
    logs = model.evaluate(ds, return_dict=True, verbose=0)  # integer labels work with either loss
    assert set(logs) == {"loss", "accuracy"}
    assert type(model.metrics[-1].metrics[0]).__name__ == metric


def test_distribution_strategy():
    assert training.distribution_strategy("default").num_replicas_in_sync == 1
    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert not isinstance(training.distribution_strategy("auto"), tf.distribute.MirroredStrategy)
    assert isinstance(training.distribution_strategy("mirrored"), tf.distribute.MirroredStrategy)
    with pytest.raises(ValueError, match="'tpu'.*mirrored"):
        training.distribution_strategy("tpu")


# ----------------------------------------------------------------------------- fit_classifier


def fit(
    state_dir: Path,
    *,
    epochs: int,
    learning_rate: float,
    patience: int | None = None,
    callbacks=(),
    fingerprint: str = "fp",
    monitor: str = "val_loss",
    mode: str = "min",
    kind: str = "tf.data",
    datasets=None,
) -> training.FitResult:
    train, val = datasets or resume_worker.datasets(kind)
    model = resume_worker.compiled_model(learning_rate=learning_rate)
    return training.fit_classifier(
        model,
        train,
        val,
        epochs=epochs,
        state_dir=state_dir,
        fingerprint=fingerprint,
        monitor=monitor,
        mode=mode,
        early_stopping_patience=patience,
        extra_callbacks=callbacks,
    )


@pytest.mark.parametrize("kind", PIPELINES)
def test_fit_returns_the_best_validation_epoch_and_reuses_a_finished_state(tmp_path, caplog, kind):
    # Selecting the HIGHEST val_loss makes the best epoch an early one (the loss falls while training), so the
    # check below can tell the best epoch's weights from the last epoch's.
    result = fit(tmp_path, epochs=4, learning_rate=0.05, mode="max", kind=kind)
    val_loss = result.history["val_loss"]
    assert result.history["epoch"] == [1, 2, 3, 4] and result.epochs_run == 4
    assert result.best_epoch == 1 + int(np.argmax(val_loss)) < 4
    assert result.best_metrics["val_loss"] == val_loss[result.best_epoch - 1]
    assert not result.stopped_early and result.resumed_epochs == 0
    _, val = resume_worker.datasets(kind)
    evaluated = result.model.evaluate(val, return_dict=True, verbose=0)["loss"]
    assert evaluated == pytest.approx(max(val_loss), rel=1e-5) and evaluated != pytest.approx(val_loss[-1])
    speeds = np.array(result.history["train_images_per_s"])
    np.testing.assert_allclose(speeds, resume_worker.N_TRAIN / np.array(result.history["train_seconds"]))
    assert result.train_seconds == pytest.approx(sum(result.history["train_seconds"]))
    assert result.history["train_minutes"][-1] == pytest.approx(result.train_seconds / 60, abs=1e-3)  # cumulative
    assert [p.name for p in tmp_path.glob("best-*")] == [f"best-epoch{result.best_epoch:04d}.weights.h5"]
    assert not (tmp_path / training.BACKUP).exists()

    again_counter = CountBatches()
    again = fit(tmp_path, epochs=4, learning_rate=0.05, mode="max", callbacks=[again_counter], kind=kind)
    assert again_counter.batches == 0 and again.history == result.history and again.resumed_epochs == 4

    with caplog.at_level(logging.WARNING, logger="realfake.training"):
        fresh = fit(tmp_path, epochs=1, learning_rate=0.05, fingerprint="other params", kind=kind)
    assert "starting over" in caplog.text and fresh.history["epoch"] == [1]


def test_early_stopping_counts_epochs_without_improvement(tmp_path):
    counter = CountBatches(freeze=True)  # learning rate 0: no epoch after the first can improve
    result = fit(tmp_path, epochs=5, learning_rate=0.01, patience=2, callbacks=[counter])
    assert result.stopped_early and result.best_epoch == 1
    assert result.history["epoch"] == [1, 2, 3] and counter.epochs == [0, 1, 2]


def test_monitor_must_be_a_validation_metric(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        fit(tmp_path, epochs=1, learning_rate=0.01, monitor="loss")


def test_resume_after_sigterm_continues_with_the_next_epoch(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    before = json.loads((tmp_path / training.PROGRESS).read_text())
    assert [e["epoch"] for e in before["history"]] == [1] and before["best_epoch"] == 1

    counter = CountBatches(freeze=True)  # later epochs can then only tie epoch 1, never beat it
    result = resume_worker.fit(tmp_path, [counter])
    steps = resume_worker.N_TRAIN // resume_worker.BATCH
    assert counter.start_iterations == steps  # weights and optimizer state came from the backup
    assert counter.epochs == [1, 2] and counter.batches == 2 * steps  # epoch 1 was not retrained
    assert result.history["epoch"] == [1, 2, 3] and result.resumed_epochs == 1
    assert result.history["val_loss"][0] == before["history"][0]["val_loss"]  # carried over, not recomputed
    # Frozen weights restored from the backup score exactly what epoch 1 scored (a restart would not).
    assert result.history["val_loss"][1:] == pytest.approx([before["history"][0]["val_loss"]] * 2, rel=1e-5)
    # The best-so-far survived: a forgetful run would have called its own first epoch (2) the best.
    assert result.best_epoch == 1
    assert result.best_metrics["val_accuracy"] == before["history"][0]["val_accuracy"]


class InterruptMidEpoch(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (what SIGINT does) in the middle of the second epoch."""

    def on_train_batch_begin(self, batch, logs=None):
        if self.model.optimizer.iterations >= 5:
            raise KeyboardInterrupt


def test_resume_after_keyboard_interrupt_drops_an_unbacked_epoch_record(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        resume_worker.fit(tmp_path, [InterruptMidEpoch()])
    progress = json.loads((tmp_path / training.PROGRESS).read_text())
    assert [e["epoch"] for e in progress["history"]] == [1]
    # Pretend the process died after recording epoch 2 but before Keras backed it up: epoch 2 must be redone
    # and its orphaned record and best weights dropped, falling back to epoch 1.
    progress["history"].append({**progress["history"][0], "epoch": 2, "val_accuracy": 2.0})
    progress["best_epoch"] = 2
    (tmp_path / training.PROGRESS).write_text(json.dumps(progress))
    (tmp_path / "best-epoch0002.weights.h5").write_bytes(b"orphan")

    counter = CountBatches(freeze=True)
    result = resume_worker.fit(tmp_path, [counter])
    assert counter.epochs == [1, 2]
    assert result.history["epoch"] == [1, 2, 3] and max(result.history["val_accuracy"]) <= 1
    assert result.best_epoch == 1


@pytest.mark.parametrize("dies_in_epoch", [1, 2])
def test_a_kill_while_the_backup_is_written_resumes_from_the_last_committed_epoch(tmp_path, monkeypatch, dies_in_epoch):
    """What failed in CI with Keras' BackupAndRestore: SIGTERM while the first backup was half written."""
    save_weights = keras.Model.save_weights

    def dies_half_way(self, filepath, *args, **kwargs):
        if Path(filepath).parent.name == training.BACKUP and f"epoch{dies_in_epoch:04d}" in Path(filepath).name:
            Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n cut off")
            raise KeyboardInterrupt
        save_weights(self, filepath, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(keras.Model, "save_weights", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            resume_worker.fit(tmp_path)
    assert [e["epoch"] for e in json.loads((tmp_path / training.PROGRESS).read_text())["history"]] == list(
        range(1, dies_in_epoch + 1)
    )

    counter = CountBatches()
    result = resume_worker.fit(tmp_path, [counter])
    committed = dies_in_epoch - 1
    assert counter.epochs == list(range(committed, resume_worker.EPOCHS))
    assert counter.start_iterations == committed * resume_worker.N_TRAIN // resume_worker.BATCH
    assert result.history["epoch"] == [1, 2, 3] and result.resumed_epochs == committed
    assert not (tmp_path / training.BACKUP).exists()  # deleted once the fit completed
