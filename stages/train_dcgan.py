"""Stage `train_dcgan`: train the seed's DCGAN on CIFAKE train/REAL images; save the generator, sample grids and
per-epoch losses. A run killed mid-training continues after its last finished epoch on the next `dvc repro`."""

import csv
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

import keras  # noqa: E402
import numpy as np  # noqa: E402

from realfake import generation, stage, tracking  # noqa: E402
from realfake.cifake import RawDataset  # noqa: E402
from realfake.errors import DataError, RealfakeError  # noqa: E402
from realfake.fileio import atomic_path, load_arrays, write_json  # noqa: E402
from realfake.models.dcgan import build_dcgan, generate_images  # noqa: E402
from realfake.params import DcganParams, load_params  # noqa: E402
from realfake.training import EpochBackup, fingerprint, make_dataset, restore_backup, seed_everything  # noqa: E402

log = logging.getLogger("realfake.stages.train_dcgan")

# The state dir (outside DVC's outputs, which DVC deletes before it runs a stage) holds:
HISTORY = "history.json"  # one record per finished epoch; written before Keras backs that epoch up
SAMPLES = "samples"  # the sample grids made so far, copied to plots/dcgan/samples at the end
BACKUP = "backup"  # training.EpochBackup: weights, both optimizers, seed states of the last finished epoch


def write_grid(generator: keras.Model, path: Path, *, dcgan: DcganParams, seed: int) -> None:
    """Samples from the fixed noise batch of `seed`: the first sample_grid**2 images `generate` makes for train."""
    count = dcgan.sample_grid**2
    images = generate_images(generator, count=count, noise_dim=dcgan.noise_dim, seed=seed, batch_size=count)
    with atomic_path(path) as tmp:
        generation.save_png(generation.sample_grid(images, columns=dcgan.sample_grid), tmp)


class EpochRecorder(keras.callbacks.Callback):
    """Per finished epoch: a sample grid every `sample_every` epochs, the record in history.json, MLflow metrics.

    Placed before EpochBackup. An epoch recorded but killed before it was backed up is trained again:
    the first epoch of a call drops records from there on.
    """

    def __init__(self, state_dir: Path, history: list[dict], *, dcgan: DcganParams, seed: int):
        super().__init__()
        self.state_dir, self.history, self.dcgan, self.seed = state_dir, history, dcgan, seed
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
            for entry in self.history:  # this MLflow run shows the whole curve, not only the resumed part
                tracking.log_metrics({k: entry[k] for k in ("d_loss", "g_loss")}, step=entry["epoch"])
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
        tracking.log_metrics({k: entry[k] for k in ("d_loss", "g_loss")}, step=epoch + 1)
        log.info(
            "epoch %d/%d: d_loss %.4f, g_loss %.4f, %.1f s",
            epoch + 1, self.dcgan.epochs, entry["d_loss"], entry["g_loss"], entry["train_seconds"],
        )  # fmt: skip


def train(images: np.ndarray, state_dir: Path, *, dcgan: DcganParams, seed: int) -> tuple[keras.Model, list[dict], int]:
    """Train (or resume) the DCGAN; return its generator, the record of every epoch and the epochs carried over."""
    seed_everything(seed)
    gan = build_dcgan(
        noise_dim=dcgan.noise_dim, dense_filters=dcgan.dense_filters, g_filters=dcgan.g_filters,
        d_filters=dcgan.d_filters, kernel_size=dcgan.kernel_size, dropout=dcgan.dropout,
        learning_rate=dcgan.learning_rate, seed=seed,
    )  # fmt: skip
    dataset = make_dataset(
        images, np.zeros(len(images)), batch_size=dcgan.batch_size, shuffle=True, seed=seed, augment=(), max_shift=0
    )
    history_file = state_dir / HISTORY
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    recorder = EpochRecorder(state_dir, history, dcgan=dcgan, seed=seed)
    initial_epoch = restore_backup(gan, state_dir / BACKUP)
    # shuffle=False: the dataset shuffles itself; verbose=0: the recorder logs one line per epoch.
    callbacks = [recorder, EpochBackup(state_dir / BACKUP)]
    gan.fit(dataset, epochs=dcgan.epochs, initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False, verbose=0)
    return gan.generator, history, recorder.first_epoch or 0


def main(paths, args) -> None:
    started = time.perf_counter()
    params = load_params(args.params, sections=["base", "dcgan"])
    dcgan, seed = params.dcgan, params.base.seed
    section = {"seed": seed, "dcgan": params.raw["dcgan"]}
    with tracking.stage_run(
        "train_dcgan", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section
    ):
        # ------------------------------------------------------------------ data: train/REAL only, never test
        if not paths.raw_dataset.exists():
            raise DataError(f"{paths.raw_dataset}: decoded CIFAKE not found; run `dvc repro download` first")
        images = generation.real_train_images(RawDataset.from_arrays(load_arrays(paths.raw_dataset)))
        images = generation.sample_images(images, count=dcgan.max_images, seed=seed)
        if not len(images):
            raise DataError(f"{paths.raw_dataset}: holds no train/REAL images to train the DCGAN on")
        state_dir = paths.state / "train_dcgan" / fingerprint(dcgan, seed, arrays=[images])
        log.info("training on %d distinct train/REAL images; state in %s", len(images), state_dir)

        # ------------------------------------------------------------------ train (resumable)
        generator, history, carried = train(images, state_dir, dcgan=dcgan, seed=seed)

        # ------------------------------------------------------------------ outputs
        model_file = paths.model_file("dcgan_generator")
        with atomic_path(model_file) as tmp:
            generator.save(tmp)
        # Each output replaced on its own: plots/dcgan also holds the .gitignore that DVC writes there.
        samples = paths.plots / "dcgan" / SAMPLES
        with atomic_path(samples, is_dir=True) as folder:
            if (state_dir / SAMPLES).exists():
                shutil.copytree(state_dir / SAMPLES, folder, dirs_exist_ok=True)
            write_grid(generator, folder / "final.png", dcgan=dcgan, seed=seed)
        with atomic_path(paths.plots / "dcgan" / "losses.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["epoch", "d_loss", "g_loss"])
            writer.writerows([e["epoch"], e["d_loss"], e["g_loss"]] for e in history)
        train_seconds = sum(e["train_seconds"] for e in history)
        metrics = {
            "train_images": len(images),
            "epochs": len(history),
            "final": {"d_loss": history[-1]["d_loss"], "g_loss": history[-1]["g_loss"]},
            "train_seconds": train_seconds,  # epochs only (first includes tracing), summed over resumed calls
            "images_per_s": len(images) * len(history) / train_seconds,
            "wall_seconds": time.perf_counter() - started,  # this call, from loading params to the last output
            "resumed_epochs": carried,  # epochs carried over from an interrupted run (0 = fresh start)
            "cpu_count": os.cpu_count(),
        }
        write_json(paths.metrics / "dcgan.json", metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifacts(paths.metrics / "dcgan.json", model_file)
        tracking.log_artifacts(samples, artifact_path="dcgan/samples")
        shutil.rmtree(state_dir)  # the outputs are complete: a rerun must train afresh


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT)
