"""Tiny training run shared by the resume tests; run as a script it kills itself after epoch 1.

Usage: python tests/resume_worker.py STATE_DIR   (exits by SIGTERM right after epoch 1 is backed up)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import keras
import numpy as np

from realfake import training

EPOCHS = 3
BATCH = 32
N_TRAIN = 128  # 4 batches per epoch
FINGERPRINT = "resume-test"


def datasets(pipeline: str = "tf.data"):
    """(train_ds, val_ds) from fixed random images; labels: brighter than average = 1.

    `pipeline` "numpy" gives `training.ArrayBatches`, what the stages use under Keras' other backends.
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TRAIN + 64, 32, 32, 3), dtype=np.uint8)
    labels = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)
    make = training.ArrayBatches if pipeline == "numpy" else training.make_dataset
    settings = dict(batch_size=BATCH, seed=0, max_shift=0)
    train = make(images[:N_TRAIN], labels[:N_TRAIN], shuffle=True, augment=("hflip",), **settings)
    val = make(images[N_TRAIN:], labels[N_TRAIN:], shuffle=False, augment=(), **settings)
    return train, val


def compiled_model(*, learning_rate: float) -> keras.Model:
    """A few-hundred-parameter binary classifier, compiled the way the stages compile theirs."""
    training.seed_everything(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    optimizer = training.build_optimizer("adam", learning_rate=learning_rate, weight_decay=0.0)
    return training.compile_classifier(
        model, optimizer=optimizer, jit_compile=False, run_eagerly=False, label_smoothing=0.0
    )


def fit(state_dir: Path, extra_callbacks=(), *, learning_rate: float = 0.01) -> training.FitResult:
    train, val = datasets()
    return training.fit_classifier(
        compiled_model(learning_rate=learning_rate),
        train,
        val,
        epochs=EPOCHS,
        state_dir=state_dir,
        fingerprint=FINGERPRINT,
        monitor="val_accuracy",
        mode="max",
        early_stopping_patience=None,
        extra_callbacks=extra_callbacks,
    )


class SigtermAfterFirstEpoch(keras.callbacks.Callback):
    """Placed after EpochBackup, so epoch 1 is fully recorded and backed up when the signal arrives."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    fit(Path(sys.argv[1]), [SigtermAfterFirstEpoch()])
    sys.exit("SIGTERM did not stop the run")
