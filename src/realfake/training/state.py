"""Resumable training state: a folder per training (named by a fingerprint of its settings and data), crash-safe
epoch backups, and a lock so that two processes never train into the same folder.

Layout of a state folder: FINGERPRINT and PROGRESS are written atomically; PROGRESS is the commit point of an
epoch; BACKUP holds the weights and optimizer state of the last finished epoch. The lock is a sibling file
(`<folder>.lock`), so deleting the folder never drops it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from realfake.errors import RealfakeError
from realfake.training.distribute import strategy_scope

logger = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.txt"
PROGRESS = "progress.json"
BACKUP = "backup"  # EpochBackup: weights + optimizer state of the last finished epoch
BACKUP_COMMIT = "backup.json"  # inside BACKUP: {"epoch": finished epochs, "weights": file name}
WEIGHTS, SEEDS = ".weights.h5", ".seeds.npz"  # per backed-up epoch: weights and optimizer; seed-generator states


class StateInUseError(RealfakeError):
    """Another process is training into the same state folder."""


def _settings(part: object) -> object:
    if hasattr(part, "model_dump"):  # a params section
        return part.model_dump(mode="json")
    return dataclasses.asdict(part) if dataclasses.is_dataclass(part) else part


def fingerprint(*parts: object, arrays: Sequence[np.ndarray] = ()) -> str:
    """A short hash of settings and data: resumable state is reused only for the very same training."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps([_settings(p) for p in parts], sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def clear_state(state_dir: Path) -> None:
    """Delete a training state directory (call after copying the outputs of a finished fit)."""
    shutil.rmtree(state_dir, ignore_errors=True)


@contextmanager
def locked_state(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `state_dir` for the duration; refuse at once when another process holds it.

    The lock (flock on `<state_dir>.lock`) dies with its process, so a killed trainer never leaves it behind.
    """
    state_dir = Path(state_dir)
    lock_path = state_dir.with_name(state_dir.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StateInUseError(
                f"{state_dir}: this training's state is in use by {holder}. Wait for that training to finish "
                "(or stop it) before running the same stage again."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_state_dir(state_dir: Path, key: str) -> None:
    """Keep state written with the same fingerprint `key`; wipe anything else."""
    stored = state_dir / FINGERPRINT
    if state_dir.exists() and any(state_dir.iterdir()):
        previous = stored.read_text() if stored.exists() else None
        if previous == key:
            return
        logger.warning("%s holds training state of other settings (%s); starting over", state_dir, previous)
        clear_state(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(stored, key)


class EpochBackup(keras.callbacks.Callback):
    """Backs the model's full state (weights, optimizer, seed-generator states) up after every epoch; see
    `restore_backup`.

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
        name = f"epoch{epoch + 1:04d}"
        for suffix, save in ((WEIGHTS, self.model.save_weights), (SEEDS, lambda p: save_seed_states(self.model, p))):
            tmp = self.backup_dir / f"tmp-{name}{suffix}"
            save(tmp)
            os.replace(tmp, self.backup_dir / f"{name}{suffix}")
        write_atomic(self.backup_dir / BACKUP_COMMIT, json.dumps({"epoch": epoch + 1, "weights": name + WEIGHTS}))
        for path in self.backup_dir.glob("epoch*"):
            if not path.name.startswith(name):
                path.unlink()

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _seed_states(model: keras.Model) -> list:
    """The state variables of the model's random-seed generators (dropout masks): not among its weights, so
    `save_weights` leaves them out, yet a resumed run must draw the masks an uninterrupted one would."""
    return sorted((v for v in model.variables if v.path.endswith("seed_generator_state")), key=lambda v: v.path)


def save_seed_states(model: keras.Model, path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **{f"s{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(_seed_states(model))})


def load_seed_states(model: keras.Model, path: Path) -> None:
    with np.load(path) as stored:
        for i, variable in enumerate(_seed_states(model)):
            variable.assign(stored[f"s{i}"])


def load_full_weights(model: keras.Model, path: Path) -> None:
    """Load weights saved with the optimizer's state into a built, compiled model."""
    with strategy_scope(model):  # variables created here must match the model's strategy
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # the file also holds the optimizer's state
        model.load_weights(path)


def restore_backup(model: keras.Model, backup_dir: Path) -> int:
    """Load the last committed `EpochBackup` into a built, compiled model; return its finished epochs (0: none).

    Pass the result to `fit(initial_epoch=...)`. Uncommitted files (a kill mid-write) are ignored.
    """
    commit = Path(backup_dir) / BACKUP_COMMIT
    if not commit.exists():
        return 0
    state = json.loads(commit.read_text())
    weights = Path(backup_dir) / state["weights"]
    load_full_weights(model, weights)
    seeds = weights.with_name(weights.name.removesuffix(WEIGHTS) + SEEDS)
    if seeds.exists():
        load_seed_states(model, seeds)
    return int(state["epoch"])
