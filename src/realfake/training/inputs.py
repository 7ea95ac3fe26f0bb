"""Input pipelines: batches of float32 pixels (0..255) and int32 labels gathered from uint8 arrays, one batch at a time.

Nothing ever holds a float32 copy of a dataset. Under Keras' TensorFlow backend the pipeline is tf.data; under any
other backend (a GPU host with JAX but no TensorFlow) it is `ArrayBatches`, the same kind of batches from NumPy,
and nothing on that path imports TensorFlow.

Every batch is a pure function of (seed, epoch, step): the shuffle order of an epoch, each image's pixel transform
(`augment`, `max_shift`) and its random degradations (`degrade`). So a training resumed at epoch k sees exactly the
batches an uninterrupted one would have seen from epoch k on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import keras
import numpy as np

from realfake.data.perturb import Degradation, degrade_batch
from realfake.data.transforms import pixel_permutations, symmetries

if TYPE_CHECKING:
    import tensorflow as tf

# Offsets added to the seed for each random stream, so shuffling, pixel transforms and degradations never share one.
_TRANSFORM_STREAM, _DEGRADE_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class Batches:
    """How one split is cut into batches. `shuffle`, `augment`, `max_shift` and `degrade` are for training;
    evaluation uses the defaults: the same order and pixels every time."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # (N,) integer class indices
    batch_size: int
    seed: int = 0
    shuffle: bool = False
    augment: tuple[str, ...] = ()
    max_shift: int = 0  # random whole-pixel translations up to this far (borders mirrored)
    degrade: tuple[Degradation, ...] = ()
    # Data-parallel training over several processes: every process takes its share of each global batch of
    # `batch_size` images (process p of P: the p-th of P equal slices), and the last, partial batch is dropped so
    # that all processes and devices run the same steps on equal shares.
    shard: tuple[int, int] = (0, 1)
    drop_remainder: bool = False

    def __post_init__(self):
        images, labels = self.images, self.labels
        object.__setattr__(self, "augment", tuple(self.augment))
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images: expected a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
        if len(images) == 0:
            raise ValueError("images: no images to batch")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size: must be > 0, got {self.batch_size}")
        if "rot90" in self.augment and images.shape[1] != images.shape[2]:
            raise ValueError(f"rot90 needs square images, got {images.shape[1]}x{images.shape[2]}")
        if not 0 <= self.max_shift < min(images.shape[1:3]):
            raise ValueError(f"max_shift: must be in [0, {min(images.shape[1:3])}) pixels, got {self.max_shift}")
        for degradation in self.degrade:
            degradation.check()
        index, count = self.shard
        if not 0 <= index < count or self.batch_size % count:
            raise ValueError(f"shard {self.shard}: need 0 <= index < count and a batch_size divisible by the count")
        if self.drop_remainder and len(images) < self.batch_size:
            raise ValueError(f"drop_remainder: {len(images)} images make no whole batch of {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def transforms_pixels(self) -> bool:
        return bool(self.augment or self.max_shift)

    def epochs(self, first: int, stop: int) -> tf.data.Dataset | ArrayBatches:
        """The batches of epochs first..stop-1 (0-based), in order: one tf.data stream of
        (stop - first) * steps_per_epoch batches, or an `ArrayBatches` that `FollowEpochs` keeps on fit's epoch."""
        if keras.backend.backend() != "tensorflow":
            return ArrayBatches(self)
        if self.shard != (0, 1) or self.drop_remainder:
            raise ValueError("sharded batches are for data-parallel training under Keras' JAX backend")
        return _tf_stream(self, first, stop)

    def steps(self, first: int, stop: int) -> tf.data.Dataset:
        """Train steps first..stop-1 counted over the epochs (step s is batch s % steps_per_epoch of epoch
        s // steps_per_epoch): the same batches as `epochs`, cut anywhere. TensorFlow backend only."""
        if keras.backend.backend() != "tensorflow":
            raise ValueError("validation rounds shorter than an epoch need Keras' TensorFlow backend")
        if self.shard != (0, 1) or self.drop_remainder:
            raise ValueError("sharded batches are for data-parallel training under Keras' JAX backend")
        return _tf_stream(self, first, stop, unit=1)

    def once(self) -> tf.data.Dataset | ArrayBatches:
        """One pass in epoch 0's order (evaluation: no shuffle, no transforms)."""
        return self.epochs(0, 1)


def batch_rng(seed: int, stream: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed + stream, epoch, step])


# ----------------------------------------------------------------------------- tf.data


def _tf_stream(batches: Batches, first: int, stop: int, *, unit: int | None = None) -> tf.data.Dataset:
    """Batches at positions first * unit .. stop * unit - 1, a position counting steps over the epochs; `unit` is
    steps_per_epoch unless given (1: first and stop count steps)."""
    import tensorflow as tf

    images = np.ascontiguousarray(batches.images)  # np.load's arrays already are: no copy
    labels = tf.convert_to_tensor(np.asarray(batches.labels, dtype=np.int32))
    n, height, width, channels = images.shape
    steps, size, seed = batches.steps_per_epoch, batches.batch_size, batches.seed
    tables = None
    if batches.transforms_pixels:
        tables = tf.constant(pixel_permutations(height, width, batches.augment, batches.max_shift), dtype=tf.int64)
    pixels = images.reshape(n * height * width, channels)  # a view, not a copy
    degrade = batches.degrade

    def degraded(batch: np.ndarray, epoch: np.int64, step: np.int64) -> np.ndarray:
        return degrade_batch(batch, degrade, batch_rng(seed, _DEGRADE_STREAM, int(epoch), int(step)))

    def load(position):
        epoch, step = position // steps, position % steps
        slots = tf.range(step * size, tf.minimum((step + 1) * size, n), dtype=tf.int64)
        if batches.shuffle:  # a stateless permutation of the whole split, a function of (seed, epoch)
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            slots = tf.random.experimental.index_shuffle(slots, key, tf.constant(n - 1, tf.int64))
        # Batches are gathered from the caller's NumPy array itself (tf.numpy_function), not from a TensorFlow
        # copy of it: the pixels exist once in memory.
        if tables is None:
            batch = tf.numpy_function(lambda i: images[i], [slots], tf.uint8, stateful=False)
        else:
            # Augmenting = picking each output pixel from a permuted position of its source image, so one gather on
            # the pixel rows of the whole set both reads the batch and transforms it.
            pair = tf.stack([tf.constant(seed + _TRANSFORM_STREAM, tf.int64), position])
            choice = tf.random.stateless_uniform(tf.shape(slots), seed=pair, maxval=len(tables), dtype=tf.int32)
            rows = tf.reshape(tf.gather(tables, choice) + slots[:, None] * (height * width), [-1])
            batch = tf.numpy_function(lambda r: pixels[r], [rows], tf.uint8, stateful=False)
        batch = tf.reshape(batch, [-1, height, width, channels])
        if degrade:
            batch = tf.numpy_function(degraded, [batch, epoch, step], tf.uint8, stateful=False)
            batch = tf.reshape(batch, [-1, height, width, channels])
        return tf.cast(batch, tf.float32), tf.gather(labels, slots)

    unit = steps if unit is None else unit
    positions = tf.data.Dataset.range(first * unit, stop * unit)
    return positions.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- NumPy (other backends)


class ArrayBatches(keras.utils.PyDataset):
    """`Batches` from NumPy alone, for Keras backends other than TensorFlow (JAX, PyTorch).

    The same kind of batches as the tf.data pipeline, not bit for bit: epoch e's order is a permutation drawn from
    (seed, e); each image of batch i gets one of the transforms `augment` allows, drawn from (seed + 1, e, i). Fit's
    epoch number arrives through `FollowEpochs`; without it (a plain `fit`) the epoch counts Keras' epoch starts.
    Batches are gathered synchronously in Keras' loop: on a GPU the backend's asynchronous dispatch overlaps them
    with the previous step.
    """

    def __init__(self, batches: Batches):
        super().__init__(workers=1, use_multiprocessing=False)
        self.spec = batches
        self._symmetries = symmetries(batches.augment)
        height, width = batches.images.shape[1:3]
        self._tables = (
            pixel_permutations(height, width, batches.augment, batches.max_shift) if batches.max_shift else None
        )
        self.images = np.ascontiguousarray(batches.images)
        self.labels = np.asarray(batches.labels, dtype=np.int32)
        self._followed = False  # True once fit's epoch numbers arrive: Keras' epoch starts are then ignored
        self.set_epoch(0)

    def follow(self, fit_epoch: int) -> None:
        """Take the epoch from fit (0-based `fit_epoch`, as callbacks see it) from now on."""
        self._followed = True
        self.set_epoch(fit_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of `epoch` (0 = the first); its batches follow from it."""
        self.epoch = epoch
        n, spec = len(self.labels), self.spec
        self._order = np.random.default_rng([spec.seed, epoch]).permutation(n) if spec.shuffle else np.arange(n)

    def on_epoch_begin(self):
        if not self._followed:
            self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return self.spec.steps_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        size = self.spec.batch_size
        idx = self._order[index * size : (index + 1) * size]
        batch = self.images[idx]  # a uint8 copy of just this batch
        if self.spec.transforms_pixels:
            self._transform(batch, batch_rng(self.spec.seed, _TRANSFORM_STREAM, self.epoch, index))
        if self.spec.degrade:
            batch = degrade_batch(
                batch, self.spec.degrade, batch_rng(self.spec.seed, _DEGRADE_STREAM, self.epoch, index)
            )
        labels = self.labels[idx]
        shard, shards = self.spec.shard
        if shards > 1:  # this process's slice of the global batch, transformed exactly as one process would
            share = slice(shard * len(idx) // shards, (shard + 1) * len(idx) // shards)
            batch, labels = batch[share], labels[share]
        return batch.astype(np.float32), labels

    def _transform(self, batch: np.ndarray, rng: np.random.Generator) -> None:
        """Move the pixels of `batch` in place. One opaque element per pixel (its channels as raw bytes): NumPy then
        moves pixels whole, about 4x faster than flipping an axis of 3-byte channel vectors."""
        pixels = batch.view(np.dtype((np.void, batch.shape[-1])))[..., 0]  # a view: writes go to `batch`
        if self._tables is not None:
            choice = rng.integers(len(self._tables), size=len(batch))
            flat = pixels.reshape(len(batch), -1)
            flat[:] = flat[np.arange(len(batch))[:, None], self._tables[choice]]
            return
        choice = rng.integers(len(self._symmetries), size=len(batch))
        for transform in np.unique(choice):
            flip, turns = self._symmetries[transform]
            if flip or turns:
                chosen = np.flatnonzero(choice == transform)
                part = pixels[chosen]
                pixels[chosen] = np.rot90(part[:, :, ::-1] if flip else part, turns, axes=(1, 2))


class FollowEpochs(keras.callbacks.Callback):
    """Sets an `ArrayBatches` to the epoch fit is starting (fit's callbacks run before the data's epoch starts)."""

    def __init__(self, dataset: ArrayBatches):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.follow(epoch)


def epoch_followers(dataset) -> list[keras.callbacks.Callback]:
    return [FollowEpochs(dataset)] if isinstance(dataset, ArrayBatches) else []
