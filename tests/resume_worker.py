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

from realfake.data.perturb import Degradation
from realfake.training.fit import FitResult, fit_classifier
from realfake.training.inputs import Batches
from realfake.training.optim import build_optimizer, compile_classifier
from realfake.training.seeding import seed_everything

EPOCHS = 4
BATCH = 32
N_TRAIN = 128  # 4 batches per epoch
FINGERPRINT = "resume-test"
# Every random source of an epoch: the shuffle, flips and shifts, degradations and dropout.
DEGRADE = (Degradation("blur", 0.5, (0.3, 1.0)), Degradation("noise", 0.5, (1.0, 6.0)))


def batches() -> tuple[Batches, Batches]:
    """(train, val) from fixed random images; labels: brighter than average = 1."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TRAIN + 64, 32, 32, 3), dtype=np.uint8)
    labels = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)
    train = Batches(images[:N_TRAIN], labels[:N_TRAIN], batch_size=BATCH, seed=0, shuffle=True, augment=("hflip",),
                    max_shift=1, degrade=DEGRADE)  # fmt: skip
    return train, Batches(images[N_TRAIN:], labels[N_TRAIN:], batch_size=BATCH)


def compiled_model(*, learning_rate: float) -> keras.Model:
    """A few-hundred-parameter binary classifier with dropout, compiled the way the stages compile theirs."""
    seed_everything(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=0)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    optimizer = build_optimizer("adam", learning_rate=learning_rate, weight_decay=0.0)
    return compile_classifier(model, optimizer=optimizer, jit_compile=False, run_eagerly=False, label_smoothing=0.0)


def fit(state_dir: Path, extra_callbacks=(), *, learning_rate: float = 0.01, **settings) -> FitResult:
    train, val = batches()
    return fit_classifier(
        compiled_model(learning_rate=learning_rate),
        train,
        val,
        epochs=settings.pop("epochs", EPOCHS),
        state_dir=state_dir,
        fingerprint=settings.pop("fingerprint", FINGERPRINT),
        monitor=settings.pop("monitor", "val_accuracy"),
        mode=settings.pop("mode", "max"),
        early_stopping_patience=settings.pop("early_stopping_patience", None),
        extra_callbacks=extra_callbacks,
        **settings,
    )


class SigtermAfterFirstEpoch(keras.callbacks.Callback):
    """Placed after EpochBackup, so epoch 1 is fully recorded and backed up when the signal arrives."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    fit(Path(sys.argv[1]), [SigtermAfterFirstEpoch()])
    sys.exit("SIGTERM did not stop the run")
