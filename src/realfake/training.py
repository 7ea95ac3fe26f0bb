"""Training plumbing shared by the classifier stages: seeding, the input pipeline, optimizers, compiling,
distribution strategies and a resumable `fit` that selects the best epoch on the validation set.

Images stay compact uint8 arrays in memory; the pipeline gathers one batch at a time, augments it and casts only
that batch to float32, so nothing ever holds a float32 copy of the whole dataset.

Under Keras' TensorFlow backend (the project's) the pipeline is tf.data. Under its JAX or PyTorch backend (a GPU
machine that has JAX but no TensorFlow) it is `ArrayBatches`, the same batches from NumPy, and nothing else here
needs TensorFlow: that is why TensorFlow is imported only inside the functions that use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import keras
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

from realfake.params import AUGMENTATIONS, OPTIMIZERS, SCHEDULES, STRATEGIES
from realfake.transforms import pixel_permutations, symmetries

logger = logging.getLogger(__name__)

MODES = ("min", "max")


# ----------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow/Keras from one integer.

    Op determinism (`tf.config.experimental.enable_op_determinism`) stays off. Measured on 2 CPU cores (small
    CNN, 10k images, 4 epochs, separate processes): the validation losses were bit-identical with and without
    it, and steady epochs took ~8% longer with it. On GPUs it swaps in slower deterministic kernels (not measured
    here), so it is not worth enabling by default.
    """
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # also seeds the backend (tf.random's global seed, which tf.data combines)


# ----------------------------------------------------------------------------- input pipeline


def check_augment(augment: Sequence[str]) -> tuple[str, ...]:
    """Return `augment` as a tuple, or raise ValueError naming an unknown augmentation."""
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
    return tuple(augment)


def _check_inputs(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int, augment: Sequence[str], max_shift: int
) -> tuple[str, ...]:
    """Refuse what neither pipeline can batch; return `augment` as a tuple."""
    augment = check_augment(augment)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images: expected a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be > 0, got {batch_size}")
    if "rot90" in augment and images.shape[1] != images.shape[2]:
        raise ValueError(f"rot90 needs square images, got {images.shape[1]}x{images.shape[2]}")
    if not 0 <= max_shift < min(images.shape[1:3]):
        raise ValueError(
            f"max_shift: must be in [0, {min(images.shape[1:3])}) pixels for these images, got {max_shift}"
        )
    return augment


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: Sequence[str],
    max_shift: int,
) -> tf.data.Dataset | ArrayBatches:
    """Batches of (float32 images holding 0..255, int32 labels) read from uint8 `images` of shape (N, H, W, 3):
    a tf.data pipeline under Keras' TensorFlow backend, an `ArrayBatches` under any other.

    Shuffling permutes indices, not images, and reshuffles every epoch; the order is a function of `seed` (and,
    for tf.data, TensorFlow's global seed, set by `seed_everything`). A run resumed after an interruption
    restarts that sequence of orders. Evaluation datasets use `shuffle=False, augment=()`: same order and pixels
    every time. Under a MirroredStrategy, `batch_size` is the global batch, split across replicas by Keras.
    `augment` and `max_shift` pick each training image's random transform (see `transforms.pixel_permutations`).
    """
    settings = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, augment=augment, max_shift=max_shift)
    if keras.backend.backend() != "tensorflow":  # checks its inputs itself
        return ArrayBatches(images, labels, **settings)
    settings["augment"] = _check_inputs(images, labels, batch_size=batch_size, augment=augment, max_shift=max_shift)
    return _tf_dataset(images, labels, **settings)


def _tf_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: tuple[str, ...],
    max_shift: int,
) -> tf.data.Dataset:
    import tensorflow as tf

    # Batches are gathered from the caller's NumPy array itself (tf.numpy_function), not from a TensorFlow copy
    # of it: the pixels exist once in memory (a tensor copy doubled the train stage's peak RSS). No .cache():
    # caching after the cast would hold a float32 copy (4x the bytes) and would freeze augmentation.
    images = np.ascontiguousarray(images)  # np.load's arrays already are: no copy
    all_labels = tf.convert_to_tensor(np.asarray(labels, dtype=np.int32))
    n, height, width, channels = images.shape

    indices = tf.data.Dataset.range(n)
    if shuffle:
        # A buffer of n int64 indices (8 bytes each) gives a full uniform shuffle at no memory cost.
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size)

    def from_numpy(take, positions: tf.Tensor) -> tf.Tensor:
        batch = tf.numpy_function(take, [positions], tf.uint8, stateful=False)  # NumPy copies just the batch
        return tf.cast(tf.reshape(batch, [-1, height, width, channels]), tf.float32)

    if augment or max_shift:
        # Augmenting = picking each output pixel from a permuted position of its source image, so one gather
        # on the pixel rows of the whole set both reads the batch and transforms it (about 6x faster on CPU
        # than per-image flips/rotations of uint8 tensors, which TensorFlow does not vectorise well).
        pixels = images.reshape(n * height * width, channels)  # a view, not a copy
        tables = tf.constant(pixel_permutations(height, width, augment, max_shift), dtype=tf.int64)
        # One stateless seed pair per batch, fresh every epoch but reproducible from `seed`.
        seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)

        def load(idx, pair):
            choice = tf.random.stateless_uniform(tf.shape(idx), seed=pair, maxval=len(tables), dtype=tf.int32)
            rows = tf.gather(tables, choice) + idx[:, None] * (height * width)
            return from_numpy(lambda r: pixels[r], tf.reshape(rows, [-1])), tf.gather(all_labels, idx)

        batches = tf.data.Dataset.zip(batches, seeds)
    else:

        def load(idx):
            return from_numpy(lambda i: images[i], idx), tf.gather(all_labels, idx)

    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class ArrayBatches(keras.utils.PyDataset):
    """`make_dataset`'s batches from NumPy alone, for Keras backends other than TensorFlow (JAX, PyTorch).

    The same batches as the tf.data pipeline in kind, not bit for bit: epoch e's order is a permutation drawn from
    (seed, e); each image of batch i gets one of the transforms `augment` allows, drawn from (seed + 1, e, i), so
    any batch is a pure function of its epoch and index. `fit_classifier` tells it fit's own epoch number
    (`FollowEpochs`), so a resumed run continues the sequence; in a plain `fit` it counts Keras' epoch starts,
    which include one for building the model. Batches are gathered synchronously in Keras' loop: on a GPU the
    backend's asynchronous dispatch overlaps them with the previous step. The batch is gathered whole, then flipped
    and turned per group of images sharing a transform: on 2 busy CPU cores a 64-image batch with flips took
    ~0.35 ms this way, against ~1.9 ms gathering every pixel through a permutation table as tf.data does. With
    shifts (`max_shift` > 0) it does gather through the tables, which hold every symmetry-and-shift combination.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        augment: Sequence[str],
        max_shift: int,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        augment = _check_inputs(images, labels, batch_size=batch_size, augment=augment, max_shift=max_shift)
        self._symmetries = symmetries(augment)
        height, width = images.shape[1:3]
        self._tables = pixel_permutations(height, width, augment, max_shift) if max_shift else None
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self._followed = False  # True once fit's epoch numbers arrive: Keras' epoch starts are then ignored
        self.set_epoch(0)

    def follow(self, fit_epoch: int) -> None:
        """Take the epoch from fit (0-based `fit_epoch`, as callbacks see it) from now on."""
        self._followed = True
        self.set_epoch(fit_epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of `epoch` (1 = the first); its batches follow from it."""
        self.epoch = epoch
        n = len(self.labels)
        self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def on_epoch_begin(self):
        if not self._followed:
            self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.images[idx]  # a uint8 copy of just this batch
        if self._tables is None and len(self._symmetries) == 1:  # no augmentation (validation, evaluation)
            return batch.astype(np.float32), self.labels[idx]
        rng = np.random.default_rng([self.seed + 1, self.epoch, index])
        # One opaque element per pixel (its channels as raw bytes): NumPy then moves pixels whole, ~4x faster
        # than flipping an axis of 3-byte channel vectors.
        pixels = batch.view(np.dtype((np.void, batch.shape[-1])))[..., 0]  # a view: writes go to `batch`
        if self._tables is not None:
            choice = rng.integers(len(self._tables), size=len(idx))
            flat = pixels.reshape(len(idx), -1)
            flat[:] = flat[np.arange(len(idx))[:, None], self._tables[choice]]
        else:
            choice = rng.integers(len(self._symmetries), size=len(idx))
            for transform in np.unique(choice):
                flip, turns = self._symmetries[transform]
                if flip or turns:
                    chosen = np.flatnonzero(choice == transform)
                    part = pixels[chosen]
                    pixels[chosen] = np.rot90(part[:, :, ::-1] if flip else part, turns, axes=(1, 2))
        return batch.astype(np.float32), self.labels[idx]


class FollowEpochs(keras.callbacks.Callback):
    """Sets an `ArrayBatches` to the epoch fit is starting (fit's callbacks run before the data's epoch starts)."""

    def __init__(self, dataset: ArrayBatches):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.follow(epoch)


def count_examples(dataset: tf.data.Dataset | ArrayBatches) -> int:
    """Number of examples in a finite dataset of (x, y) batches (one pass over a tf.data pipeline, no model)."""
    if isinstance(dataset, ArrayBatches):
        return len(dataset.labels)
    import tensorflow as tf

    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("dataset is infinite; training needs a finite dataset per epoch")
    sizes = dataset.map(lambda x, *_: tf.shape(x, out_type=tf.int64)[0])
    return int(sizes.reduce(tf.constant(0, tf.int64), lambda total, size: total + size))


# ----------------------------------------------------------------------------- optimizers, compile, strategy


def learning_rate_schedule(
    name: str, *, learning_rate: float, warmup_epochs: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate per optimizer step. Schedule "constant": `learning_rate`; "warmup_cosine": a linear rise
    from 0 to `learning_rate` over `warmup_epochs`, then a cosine decay to 0 at the end of the last epoch.
    Steps count optimizer updates, so a resumed run continues the schedule where it stopped (the iteration
    count is saved with the weights).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    if name == "constant":
        return learning_rate
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=learning_rate, warmup_steps=warmup, decay_steps=total - warmup
    )


def build_optimizer(
    name: str,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name with decoupled `weight_decay` (0 = none; BatchNorm and biases are exempt);
    its other settings keep Keras' defaults.
    """
    classes = {
        "adam": keras.optimizers.Adam,
        "adamax": keras.optimizers.Adamax,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
    }
    assert set(classes) == set(OPTIMIZERS), "keep build_optimizer in step with params.OPTIMIZERS"
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
    # Passed explicitly, or AdamW applies its own default of 0.004; None skips the decay step (AdamW needs a float).
    decay = weight_decay if weight_decay or name == "adamw" else None
    optimizer = classes[name](learning_rate=learning_rate, weight_decay=decay)
    if weight_decay:
        # Decaying BatchNorm scales/shifts and biases only fights the normalisation (matched by variable name).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_classifier(
    model: keras.Model,
    *,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool | Literal["auto"],
    run_eagerly: bool,
    label_smoothing: float,
) -> keras.Model:
    """Compile for integer labels: one sigmoid unit -> binary cross-entropy, else softmax -> sparse categorical.

    The accuracy metric is named "accuracy" either way, so histories and monitors read the same for all models.
    `label_smoothing` pulls the binary targets towards 0.5 (Keras' sparse categorical loss has no smoothing).
    """
    units = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    if units is None:
        raise ValueError(f"model {model.name!r}: expected one output tensor, got {len(model.outputs)}")
    if label_smoothing and units != 1:
        raise ValueError(f"model {model.name!r}: label_smoothing needs a one-unit sigmoid output, not {units} units")
    if units == 1:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy], jit_compile=jit_compile, run_eagerly=run_eagerly)
    return model


class SingleDevice:
    """Stands in for TensorFlow's default strategy under Keras' other backends: one device, nothing to scope."""

    num_replicas_in_sync = 1

    def scope(self) -> AbstractContextManager:
        return nullcontext()


def distribution_strategy(name: str) -> tf.distribute.Strategy | SingleDevice:
    """A strategy by name; "auto" = MirroredStrategy over all GPUs when there are several, else "default".

    Under Keras' other backends "auto" and "default" train on one device (`SingleDevice`) and "mirrored" is
    refused: MirroredStrategy is TensorFlow's (`keras.distribution` is those backends' own way to scale out).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown distribution strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    backend = keras.backend.backend()
    if backend != "tensorflow":
        if name == "mirrored":
            raise ValueError(f"strategy 'mirrored' needs Keras' TensorFlow backend, not {backend!r}; use 'auto'")
        return SingleDevice()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logger.info("distribution: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


# ----------------------------------------------------------------------------- resumable fit


def fingerprint(*parts: object, arrays: Sequence[np.ndarray] = ()) -> str:
    """A short hash of settings and data: resumable state is reused only for the very same training."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(
        json.dumps(
            [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True, default=str
        ).encode()
    )
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


# state_dir layout: FINGERPRINT and PROGRESS are written atomically; PROGRESS is the commit point of an epoch.
FINGERPRINT = "fingerprint.txt"
PROGRESS = "progress.json"
BACKUP = "backup"  # EpochBackup: weights + optimizer state of the last finished epoch
BACKUP_COMMIT = "backup.json"  # inside BACKUP: {"epoch": finished epochs, "weights": file name}


class EpochBackup(keras.callbacks.Callback):
    """Backs the model's full state (weights, optimizer, seed states) up after every epoch; see `restore_backup`.

    Keras' BackupAndRestore rewrites one weights file in place and its epoch counter separately: a kill during
    the first write leaves a corrupt file and nothing to fall back to, and a kill between the two pairs weights
    and counter of different epochs. Here each epoch writes a new file, commits it by atomically replacing a
    small JSON that names it, and only then deletes the older file. Deleted at the end of a completed `fit`.
    """

    def __init__(self, backup_dir: Path):
        super().__init__()
        self.backup_dir = Path(backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch + 1:04d}.weights.h5"
        tmp = self.backup_dir / f"tmp-{name}"
        self.model.save_weights(tmp)
        os.replace(tmp, self.backup_dir / name)
        _write_atomic(self.backup_dir / BACKUP_COMMIT, json.dumps({"epoch": epoch + 1, "weights": name}))
        for path in self.backup_dir.glob("*.weights.h5"):
            if path.name != name:
                path.unlink()

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _strategy_scope(model: keras.Model) -> AbstractContextManager:
    return getattr(model, "distribute_strategy", SingleDevice()).scope()  # TensorFlow's trainer only has one


def restore_backup(model: keras.Model, backup_dir: Path) -> int:
    """Load the last committed `EpochBackup` into a built, compiled model; return its finished epochs (0: none).

    Pass the result to `fit(initial_epoch=...)`. Uncommitted files (a kill mid-write) are ignored.
    """
    commit = Path(backup_dir) / BACKUP_COMMIT
    if not commit.exists():
        return 0
    state = json.loads(commit.read_text())
    with _strategy_scope(model):  # variables created here must match the model's strategy
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # the file also holds the optimizer's state
        model.load_weights(Path(backup_dir) / state["weights"])
    return int(state["epoch"])


@dataclasses.dataclass
class FitResult:
    """Outcome of `fit_classifier`; epochs are numbered from 1."""

    model: keras.Model  # the model passed in, holding the weights of best_epoch
    history: dict[str, list[Any]]  # per-epoch lists: epoch, Keras logs, train_seconds, epoch_seconds, ...
    best_epoch: int
    best_metrics: dict[str, float]  # Keras logs (train and val_) of best_epoch
    epochs_run: int  # epochs in history, including those run before an interruption
    train_seconds: float  # sum of the training parts of all epochs (validation excluded)
    stopped_early: bool
    resumed_epochs: int  # epochs carried over from an earlier, interrupted call (0 = fresh start)


def clear_state(state_dir: Path) -> None:
    """Delete a training state directory (call after copying the outputs of a finished fit)."""
    shutil.rmtree(state_dir, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def _best_path(state_dir: Path, epoch: int) -> Path:
    return state_dir / f"best-epoch{epoch:04d}.weights.h5"


def _prepare_state_dir(state_dir: Path, fingerprint: str) -> None:
    """Keep state written with the same fingerprint; wipe anything else."""
    stored = state_dir / FINGERPRINT
    if state_dir.exists() and any(state_dir.iterdir()):
        previous = stored.read_text() if stored.exists() else None
        if previous == fingerprint:
            return
        logger.warning("%s holds training state of other settings (%s); starting over", state_dir, previous)
        clear_state(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(stored, fingerprint)


class _Progress(keras.callbacks.Callback):
    """Records history, best epoch and timings in state_dir; placed before EpochBackup.

    Commit order per epoch: best weights (if improved), then progress.json, then the backup. A kill between
    progress.json and the backup makes the epoch run again; the first `on_epoch_begin` after a restart drops
    the orphaned record. The weights of a superseded best are deleted only once the next epoch has begun (its
    predecessor's backup is then complete), so a dropped record can always fall back to the previous best.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        epochs: int,
        monitor: str,
        mode: str,
        patience: int | None,
        train_examples: int,
        progress: dict[str, Any],
    ):
        super().__init__()
        self.state_dir, self.epochs, self.monitor, self.mode = state_dir, epochs, monitor, mode
        self.patience, self.train_examples, self.progress = patience, train_examples, progress
        self.first_epoch: int | None = None  # 0-based epoch this fit call started at
        self._t0 = self._t_train = 0.0

    # -- helpers
    def _better(self, value: float, best: float) -> bool:
        return value < best if self.mode == "min" else value > best

    def _best_epoch(self, history: list[dict]) -> int | None:
        best = None
        for entry in history:
            value = entry[self.monitor]
            if math.isfinite(value) and (best is None or self._better(value, best[self.monitor])):
                best = entry
        return None if best is None else best["epoch"]

    def _delete_stale_best(self) -> None:
        keep = self.progress["best_epoch"]
        for path in self.state_dir.glob("best-epoch*.weights.h5"):
            if keep is None or path != _best_path(self.state_dir, keep):
                path.unlink()

    def _commit(self) -> None:
        _write_atomic(self.state_dir / PROGRESS, json.dumps(self.progress, indent=1))

    # -- hooks
    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            history = self.progress["history"]
            if epoch > len(history):
                raise RuntimeError(
                    f"{self.state_dir}: the backup resumes at epoch {epoch + 1} but progress.json records "
                    f"only {len(history)} epoch(s); delete the directory to start over"
                )
            if epoch < len(history):  # killed after our commit, before the backup: that epoch is redone
                del history[epoch:]
                self.progress["best_epoch"] = self._best_epoch(history)
                self._commit()
            if epoch:
                logger.info("resuming at epoch %d of %d from %s", epoch + 1, self.epochs, self.state_dir)
        self._delete_stale_best()  # the previous epoch's backup is complete by now
        self._t0 = time.perf_counter()
        self._t_train = 0.0

    def _seconds_since_epoch_start(self) -> float:
        # JAX dispatches steps asynchronously: the train loop returns before its steps have run. Reading the step
        # counter, which the last step writes, waits for them (TensorFlow has already waited; then it costs nothing).
        if self.model.optimizer is not None:
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        return time.perf_counter() - self._t0

    def on_test_begin(self, logs=None):
        if not self._t_train:  # validation follows the epoch's last train step
            self._t_train = self._seconds_since_epoch_start()

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise ValueError(f"monitor {self.monitor!r} is not among the epoch's logs: {', '.join(sorted(logs or {}))}")
        train_seconds = self._t_train or self._seconds_since_epoch_start()
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        logs["train_seconds"] = train_seconds  # for the callbacks after this one (fit passes them the same dict)
        entry |= {
            "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - self._t0,
            "train_images_per_s": self.train_examples / train_seconds,
        }
        history = self.progress["history"]
        history.append(entry)
        best = self.progress["best_epoch"]
        value = entry[self.monitor]
        if math.isfinite(value) and (best is None or self._better(value, history[best - 1][self.monitor])):
            path = _best_path(self.state_dir, epoch + 1)
            tmp = path.with_name("tmp-" + path.name)
            self.model.save_weights(tmp)
            os.replace(tmp, path)
            self.progress["best_epoch"] = best = epoch + 1
        stop = self.patience is not None and best is not None and epoch + 1 - best >= self.patience
        self.progress["stopped_early"] = stop
        self.progress["finished"] = stop or epoch + 1 >= self.epochs
        self._commit()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch")
        logger.info("epoch %d/%d: %s%s", epoch + 1, self.epochs, shown, " (best)" if best == epoch + 1 else "")
        if stop:
            logger.info("early stopping: no %s improvement for %d epoch(s)", self.monitor, self.patience)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._delete_stale_best()


def fit_classifier(
    model: keras.Model,
    train_ds: tf.data.Dataset | ArrayBatches,
    val_ds: tf.data.Dataset | ArrayBatches,
    *,
    epochs: int,
    state_dir: Path,
    fingerprint: str,
    monitor: str,
    mode: str,
    early_stopping_patience: int | None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Train a compiled model, keep the weights of the best validation epoch, resume after interruptions.

    State lives in `state_dir`: a call with the same `fingerprint` continues after the last completed epoch
    (or, if training had finished, returns its result without training); a different fingerprint wipes it.
    `monitor` must be a validation metric ("val_..."), so the test set can never select the model.
    The caller copies the outputs, then calls `clear_state(state_dir)`.
    The first epoch's timings include tracing and compiling the train function. Counting the training images
    for images/s costs one pass over the input pipeline per call (~1 s per 80k images on 2 CPU cores).
    """
    if not monitor.startswith("val_"):
        raise ValueError(f"monitor {monitor!r}: model selection must use a validation metric (val_...)")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: allowed: {', '.join(MODES)}")
    if epochs <= 0:
        raise ValueError(f"epochs: must be > 0, got {epochs}")
    if early_stopping_patience is not None and early_stopping_patience <= 0:
        raise ValueError(f"early_stopping_patience: must be > 0 or None, got {early_stopping_patience}")

    # Settings that change what an epoch record means are part of the fingerprint.
    settings = f"epochs={epochs} monitor={monitor} mode={mode} patience={early_stopping_patience}"
    _prepare_state_dir(state_dir, f"{fingerprint} | {settings}")
    progress_path = state_dir / PROGRESS
    if progress_path.exists():
        progress = json.loads(progress_path.read_text())
    else:
        progress = {"history": [], "best_epoch": None, "stopped_early": False, "finished": False}
    carried = len(progress["history"])

    if not progress["finished"]:
        if not model.built:  # the backup can only be loaded into existing weights
            model.build(_batch_shape(train_ds))
        initial_epoch = restore_backup(model, state_dir / BACKUP)
        tracker = _Progress(
            state_dir,
            epochs=epochs,
            monitor=monitor,
            mode=mode,
            patience=early_stopping_patience,
            train_examples=count_examples(train_ds),
            progress=progress,
        )
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=[*_epoch_followers(train_ds), tracker, EpochBackup(state_dir / BACKUP), *extra_callbacks],
            shuffle=False,  # the dataset shuffles itself; this only silences Keras' warning
            # A live progress bar in a terminal; in logs (dvc repro piped, CI) one line per epoch instead.
            verbose=1 if sys.stdout.isatty() else 2,
        )
        carried = tracker.first_epoch if tracker.first_epoch is not None else len(progress["history"])
    else:
        logger.info("%s holds a finished run; returning its result without training", state_dir)

    return _result(model, state_dir, progress, carried)


def _epoch_followers(dataset: tf.data.Dataset | ArrayBatches) -> list[keras.callbacks.Callback]:
    return [FollowEpochs(dataset)] if isinstance(dataset, ArrayBatches) else []


def _batch_shape(dataset: tf.data.Dataset | ArrayBatches) -> tuple[int | None, ...]:
    if isinstance(dataset, ArrayBatches):
        return (None, *dataset.images.shape[1:])
    return tuple(dataset.element_spec[0].shape)


def _result(model: keras.Model, state_dir: Path, progress: dict[str, Any], carried: int) -> FitResult:
    history = progress["history"]
    best_epoch = progress["best_epoch"]
    if best_epoch is None:
        raise RuntimeError(f"no epoch produced a finite validation metric; see {state_dir / PROGRESS}")
    with _strategy_scope(model):  # variables created here must match the model's strategy
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # the file also holds the optimizer's state
        model.load_weights(_best_path(state_dir, best_epoch))
    keys = list(dict.fromkeys(k for entry in history for k in entry))
    timing = {"epoch", "train_seconds", "epoch_seconds", "train_images_per_s", "train_minutes"}
    columns = {k: [entry.get(k) for entry in history] for k in keys}
    # cumulative training time at the end of each epoch: the x axis of accuracy-against-time plots
    columns["train_minutes"] = [round(t / 60, 3) for t in itertools.accumulate(columns["train_seconds"])]
    return FitResult(
        model=model,
        history=columns,
        best_epoch=best_epoch,
        best_metrics={k: v for k, v in history[best_epoch - 1].items() if k not in timing},
        epochs_run=len(history),
        train_seconds=sum(entry["train_seconds"] for entry in history),
        stopped_early=progress["stopped_early"],
        resumed_epochs=carried,
    )
