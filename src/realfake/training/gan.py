"""Resumable DCGAN training: the adversarial model trained through `fit()`, with a record of every epoch and sample
grids from a fixed noise batch, all kept in a state folder until the training finishes."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from realfake.data.generated import sample_grid, save_png
from realfake.errors import RealfakeError
from realfake.fileio import atomic_path
from realfake.models.dcgan import build_dcgan, generate_images
from realfake.params import DcganParams
from realfake.training.inputs import Batches
from realfake.training.seeding import seed_everything
from realfake.training.state import BACKUP, EpochBackup, locked_state, restore_backup

log = logging.getLogger(__name__)

# The state folder (outside DVC's outputs, which DVC deletes before it runs a stage) holds:
HISTORY = "history.json"  # one record per finished epoch; written before Keras backs that epoch up
SAMPLES = "samples"  # the sample grids made so far, epoch_005.png ...


@dataclasses.dataclass
class GanResult:
    generator: keras.Model
    history: list[dict]  # {epoch, d_loss, g_loss, train_seconds} per finished epoch, resumed ones included
    resumed_epochs: int  # epochs carried over from an interrupted run (0 = fresh start)
    samples: Path  # the folder of sample grids


def write_grid(generator: keras.Model, path: Path, *, dcgan: DcganParams, seed: int) -> None:
    """Samples from the fixed noise batch of `seed`: the first sample_grid**2 images `generate` makes for train."""
    count = dcgan.sample_grid**2
    images = generate_images(generator, count=count, noise_dim=dcgan.noise_dim, seed=seed, batch_size=count)
    with atomic_path(path) as tmp:
        save_png(sample_grid(images, columns=dcgan.sample_grid), tmp)


class EpochRecorder(keras.callbacks.Callback):
    """Per finished epoch: a sample grid every `sample_every` epochs and the record in history.json.

    Placed before EpochBackup. An epoch recorded but killed before it was backed up is trained again: the first
    epoch of a call drops records from there on. `on_record(entry)` sees every record, the carried-over ones first.
    """

    def __init__(self, state_dir: Path, history: list[dict], *, dcgan: DcganParams, seed: int, on_record=None):
        super().__init__()
        self.state_dir, self.history, self.dcgan, self.seed = state_dir, history, dcgan, seed
        self.on_record = on_record or (lambda entry: None)
        self.first_epoch: int | None = None  # 0-based epoch this call started at
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > len(self.history):
                raise RealfakeError(f"{self.state_dir}: backup is ahead of {HISTORY}; delete the folder to start over")
            del self.history[epoch:]
            if epoch:
                log.info("resuming at epoch %d of %d from %s", epoch + 1, self.dcgan.epochs, self.state_dir)
            for entry in self.history:
                self.on_record(entry)
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "d_loss": float(logs["d_loss"]), "g_loss": float(logs["g_loss"])}
        entry["train_seconds"] = time.perf_counter() - self._t0  # sampling below is not training time
        if (epoch + 1) % self.dcgan.sample_every == 0:
            grid = self.state_dir / SAMPLES / f"epoch_{epoch + 1:03d}.png"
            write_grid(self.model.generator, grid, dcgan=self.dcgan, seed=self.seed)
        self.history.append(entry)
        with atomic_path(self.state_dir / HISTORY) as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))
        self.on_record(entry)
        log.info(
            "epoch %d/%d: d_loss %.4f, g_loss %.4f, %.1f s",
            epoch + 1, self.dcgan.epochs, entry["d_loss"], entry["g_loss"], entry["train_seconds"],
        )  # fmt: skip


def train_dcgan(
    images: np.ndarray,
    state_dir: Path,
    *,
    dcgan: DcganParams,
    seed: int,
    on_record=None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> GanResult:
    """Train (or resume) the DCGAN on uint8 `images`; the caller copies the outputs, then deletes `state_dir`."""
    state_dir = Path(state_dir)
    with locked_state(state_dir):
        state_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        gan = build_dcgan(
            noise_dim=dcgan.noise_dim, dense_filters=dcgan.dense_filters, g_filters=dcgan.g_filters,
            d_filters=dcgan.d_filters, kernel_size=dcgan.kernel_size, dropout=dcgan.dropout,
            learning_rate=dcgan.learning_rate, seed=seed,
        )  # fmt: skip
        batches = Batches(images, np.zeros(len(images), np.int32), batch_size=dcgan.batch_size, seed=seed, shuffle=True)
        history_file = state_dir / HISTORY
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        recorder = EpochRecorder(state_dir, history, dcgan=dcgan, seed=seed, on_record=on_record)
        initial_epoch = restore_backup(gan, state_dir / BACKUP)
        if initial_epoch < dcgan.epochs:
            stream = batches.epochs(initial_epoch, dcgan.epochs)
            gan.fit(
                stream,
                epochs=dcgan.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=batches.steps_per_epoch,
                callbacks=[recorder, EpochBackup(state_dir / BACKUP), *extra_callbacks],
                shuffle=False,  # the batches shuffle themselves; this only silences Keras' warning
                verbose=0,  # the recorder logs one line per epoch
            )
        else:  # killed after the last epoch was backed up, before fit returned: nothing is left to train
            if len(history) < initial_epoch:
                raise RealfakeError(f"{state_dir}: backup is ahead of {HISTORY}; delete the folder to start over")
            del history[initial_epoch:]
            for entry in history:  # what the recorder reports of carried-over epochs when training resumes
                recorder.on_record(entry)
        return GanResult(gan.generator, history, initial_epoch, state_dir / SAMPLES)
