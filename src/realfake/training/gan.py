"""Resumable DCGAN training: the adversarial model trained through `fit()`, with a record of every epoch, sample
grids from a fixed noise batch and quality measurements (`QualityProbe`), all kept in a state folder until the
training finishes. An optional training-time budget ends it early, at the first epoch whose successor would end past
the budget, as `training.fit` does for the classifiers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from realfake.data.cifake import CLASSES, SPLITS, RawDataset
from realfake.data.generated import sample_grid, sample_images, save_png
from realfake.errors import RealfakeError
from realfake.evaluation import gan_quality
from realfake.evaluation.ood import embed
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
UNTRAINED = "untrained.json"  # the quality of the generator before its first step
QUALITY_KEYS = ("frechet_distance", "diversity_ratio")  # in the history records of measured epochs
EMBED_BATCH = 250  # images per detector call when embedding (memory, not results)


@dataclasses.dataclass
class GanResult:
    generator: keras.Model
    history: list[dict]  # {epoch, d_loss, g_loss, train_seconds[, frechet_distance, diversity_ratio]} per epoch
    resumed_epochs: int  # epochs carried over from an interrupted run (0 = fresh start)
    samples: Path  # the folder of sample grids
    untrained: dict | None  # the quality before the first step (None without a probe)
    stopped_by_budget: bool  # ended before dcgan.epochs because another epoch would pass max_train_minutes


def real_test_images(raw: RawDataset, *, count: int, seed: int) -> np.ndarray:
    """A seeded sample of 2 * count CIFAKE test/REAL images (fewer if the split is smaller): the reference set of a
    `QualityProbe`. For reported measurements only: nothing is ever selected by them."""
    chosen = (raw.split == SPLITS.index("test")) & (raw.label == CLASSES.index("REAL"))
    return sample_images(raw.images[chosen], count=2 * count, seed=seed)


class QualityProbe:
    """Measures generators against real images in a detector's penultimate-layer features (`ood.embed`).

    The real images are split into two disjoint halves: the first is the reference of every measurement, the
    second measures real against real (`real_vs_real`), the floor a perfect generator would reach at this size.
    Each measurement generates as many images as the reference holds, from the fixed noise of `seed`.
    """

    def __init__(self, detector: keras.Model, real_images: np.ndarray, *, noise_dim: int, seed: int):
        half = len(real_images) // 2
        if half < 2:
            raise ValueError(f"real_images: need at least 4 images to measure quality, got {len(real_images)}")
        self.detector, self.noise_dim, self.seed = detector, noise_dim, seed
        self.reference = embed(detector, real_images[:half], batch_size=EMBED_BATCH)
        other = embed(detector, real_images[half : 2 * half], batch_size=EMBED_BATCH)
        self.count = half
        self.real_vs_real = gan_quality.frechet_distance(other, self.reference)

    def __call__(self, generator: keras.Model) -> dict[str, float]:
        images = generate_images(
            generator, count=self.count, noise_dim=self.noise_dim, seed=self.seed, batch_size=EMBED_BATCH
        )
        features = embed(self.detector, images, batch_size=EMBED_BATCH)
        return {
            "frechet_distance": gan_quality.frechet_distance(features, self.reference),
            "diversity_ratio": gan_quality.diversity_ratio(features, self.reference),
        }


def over_budget(history: Sequence[dict], budget_minutes: float | None) -> bool:
    """True when another epoch like the last one would end past the budget (no budget or no epoch: never)."""
    if budget_minutes is None or not history:
        return False
    spent = [entry["train_seconds"] for entry in history]
    # the first epoch includes tracing: the last epoch predicts the next one better
    return sum(spent) + spent[-1] > budget_minutes * 60


def write_grid(generator: keras.Model, path: Path, *, dcgan: DcganParams, seed: int) -> None:
    """Samples from the fixed noise batch of `seed`: the first sample_grid**2 images `generate` makes for train."""
    count = dcgan.sample_grid**2
    images = generate_images(generator, count=count, noise_dim=dcgan.noise_dim, seed=seed, batch_size=count)
    with atomic_path(path) as tmp:
        save_png(sample_grid(images, columns=dcgan.sample_grid), tmp)


class EpochRecorder(keras.callbacks.Callback):
    """Per finished epoch: the record in history.json; every `sample_every` epochs and at the last epoch (the
    budget's included) a sample grid and, with a `probe`, the quality; stops fit when the budget is spent.

    Placed before EpochBackup. An epoch recorded but killed before it was backed up is trained again: the first
    epoch of a call drops records from there on. `on_record(entry)` sees every record, the carried-over ones first.
    """

    def __init__(
        self, state_dir: Path, history: list[dict], *, dcgan: DcganParams, seed: int, on_record=None, probe=None
    ):
        super().__init__()
        self.state_dir, self.history, self.dcgan, self.seed, self.probe = state_dir, history, dcgan, seed, probe
        self.on_record = on_record or (lambda entry: None)
        self.stopped_by_budget = False
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
        out_of_time = epoch + 1 < self.dcgan.epochs and over_budget(
            [*self.history, entry], self.dcgan.max_train_minutes
        )
        if (epoch + 1) % self.dcgan.sample_every == 0 or epoch + 1 >= self.dcgan.epochs or out_of_time:
            grid = self.state_dir / SAMPLES / f"epoch_{epoch + 1:03d}.png"
            write_grid(self.model.generator, grid, dcgan=self.dcgan, seed=self.seed)
            if self.probe is not None:
                entry |= self.probe(self.model.generator)
        self.history.append(entry)
        with atomic_path(self.state_dir / HISTORY) as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))
        self.on_record(entry)
        log.info(
            "epoch %d/%d: d_loss %.4f, g_loss %.4f, %.1f s",
            epoch + 1, self.dcgan.epochs, entry["d_loss"], entry["g_loss"], entry["train_seconds"],
        )  # fmt: skip
        if "frechet_distance" in entry:
            log.info("epoch %d: Frechet distance %.4g, diversity ratio %.3f", epoch + 1, *map(entry.get, QUALITY_KEYS))
        if out_of_time:
            log.info("stopping: another epoch would pass the %.1f-minute budget", self.dcgan.max_train_minutes)
            self.stopped_by_budget = True
            self.model.stop_training = True


def train_dcgan(
    images: np.ndarray,
    state_dir: Path,
    *,
    dcgan: DcganParams,
    seed: int,
    on_record=None,
    probe: QualityProbe | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> GanResult:
    """Train (or resume) the DCGAN on uint8 `images`; the caller copies the outputs, then deletes `state_dir`.

    With a `probe`, the untrained generator is measured once (kept in the state folder), then every sampled epoch.
    """
    state_dir = Path(state_dir)
    with locked_state(state_dir):
        state_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        gan = build_dcgan(
            noise_dim=dcgan.noise_dim, dense_filters=dcgan.dense_filters, g_filters=dcgan.g_filters,
            d_filters=dcgan.d_filters, kernel_size=dcgan.kernel_size, dropout=dcgan.dropout,
            learning_rate=dcgan.learning_rate, beta_1=dcgan.beta_1, precision=dcgan.precision, seed=seed,
        )  # fmt: skip
        batches = Batches(images, np.zeros(len(images), np.int32), batch_size=dcgan.batch_size, seed=seed, shuffle=True)
        history_file = state_dir / HISTORY
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        untrained = None
        if probe is not None:  # measured before the backup is loaded: the freshly seeded, untrained generator
            if not (state_dir / UNTRAINED).exists():
                with atomic_path(state_dir / UNTRAINED) as tmp:
                    tmp.write_text(json.dumps(probe(gan.generator)))
            untrained = json.loads((state_dir / UNTRAINED).read_text())
        recorder = EpochRecorder(state_dir, history, dcgan=dcgan, seed=seed, on_record=on_record, probe=probe)
        initial_epoch = restore_backup(gan, state_dir / BACKUP)
        budget_spent = over_budget(history[:initial_epoch], dcgan.max_train_minutes)
        if initial_epoch < dcgan.epochs and not budget_spent:
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
        else:  # killed after the last epoch (or the budget's) was backed up, before fit returned: nothing to train
            if len(history) < initial_epoch:
                raise RealfakeError(f"{state_dir}: backup is ahead of {HISTORY}; delete the folder to start over")
            del history[initial_epoch:]
            for entry in history:  # what the recorder reports of carried-over epochs when training resumes
                recorder.on_record(entry)
        stopped = recorder.stopped_by_budget or (budget_spent and initial_epoch < dcgan.epochs)
        return GanResult(gan.generator, history, initial_epoch, state_dir / SAMPLES, untrained, stopped)
