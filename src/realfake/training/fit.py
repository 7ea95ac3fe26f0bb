"""A resumable `fit` that keeps the best validation epoch, optionally stops at a training-time budget, and can record
a test curve that is reported but never selects anything."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from realfake.training.inputs import Batches, epoch_followers
from realfake.training.state import (
    BACKUP,
    PROGRESS,
    EpochBackup,
    load_full_weights,
    locked_state,
    prepare_state_dir,
    restore_backup,
    write_atomic,
)

logger = logging.getLogger(__name__)

MODES = ("min", "max")
TEST_PREFIX = "test_"  # history columns of the test curve: reported, never used to select
_TIMING = {"epoch", "train_seconds", "epoch_seconds", "train_images_per_s", "train_minutes"}


@dataclasses.dataclass
class FitResult:
    """Outcome of `fit_classifier`; epochs are numbered from 1."""

    model: keras.Model  # the model passed in, holding the weights of best_epoch
    history: dict[str, list[Any]]  # per-epoch lists: epoch, Keras logs, train_seconds, epoch_seconds, ...
    best_epoch: int
    best_metrics: dict[str, float]  # Keras logs (train and val_) of best_epoch; never test_ columns
    epochs_run: int  # epochs in history, including those run before an interruption
    train_seconds: float  # sum of the training parts of all epochs (validation excluded)
    stopped_early: bool
    stopped_by_budget: bool
    resumed_epochs: int  # epochs carried over from an earlier, interrupted call (0 = fresh start)


def _best_path(state_dir: Path, epoch: int) -> Path:
    return state_dir / f"best-epoch{epoch:04d}.weights.h5"


class TestCurve(keras.callbacks.Callback):
    """After each epoch, score a held-out split (the test split) and add `test_accuracy` (and `test_roc_auc` for
    two classes) to the epoch's logs: the accuracy-against-time curve. Placed before `_Progress`, which records it;
    `fit_classifier` refuses to select on it. Its time is not training time."""

    __test__ = False  # a callback, not a test class: pytest must not collect it where a test module imports it

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int):
        super().__init__()
        self.images, self.labels, self.batch_size = images, np.asarray(labels), batch_size

    def on_epoch_end(self, epoch, logs=None):
        from realfake.evaluation.scoring import score_curve_point

        logs.update(score_curve_point(self.model, self.images, self.labels, batch_size=self.batch_size))


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
        budget_seconds: float | None,
        train_examples: int,
        progress: dict[str, Any],
    ):
        super().__init__()
        self.state_dir, self.epochs, self.monitor, self.mode = state_dir, epochs, monitor, mode
        self.patience, self.budget_seconds, self.train_examples = patience, budget_seconds, train_examples
        self.progress = progress
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
        write_atomic(self.state_dir / PROGRESS, json.dumps(self.progress, indent=1))

    def _over_budget(self) -> bool:
        """True when another epoch like the last one would end past the budget (no budget: never)."""
        if self.budget_seconds is None:
            return False
        spent = [entry["train_seconds"] for entry in self.progress["history"]]
        # the first epoch includes tracing: the last epoch predicts the next one better
        return sum(spent) + spent[-1] > self.budget_seconds

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
            tmp.replace(path)
            self.progress["best_epoch"] = best = epoch + 1
        stop = self.patience is not None and best is not None and epoch + 1 - best >= self.patience
        out_of_time = epoch + 1 < self.epochs and not stop and self._over_budget()
        self.progress["stopped_early"] = stop
        self.progress["stopped_by_budget"] = out_of_time
        self.progress["finished"] = stop or out_of_time or epoch + 1 >= self.epochs
        self._commit()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch")
        logger.info("epoch %d/%d: %s%s", epoch + 1, self.epochs, shown, " (best)" if best == epoch + 1 else "")
        if stop:
            logger.info("early stopping: no %s improvement for %d epoch(s)", self.monitor, self.patience)
        if out_of_time:
            logger.info("stopping: another epoch would pass the %.1f-minute budget", self.budget_seconds / 60)
        if stop or out_of_time:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._delete_stale_best()


def fit_classifier(
    model: keras.Model,
    train: Batches,
    val: Batches,
    *,
    epochs: int,
    state_dir: Path,
    fingerprint: str,
    monitor: str,
    mode: str,
    early_stopping_patience: int | None,
    max_train_minutes: float | None = None,
    validate_every_steps: int | None = None,
    test_curve: TestCurve | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Train a compiled model, keep the weights of the best validation epoch, resume after interruptions.

    State lives in `state_dir`: a call with the same `fingerprint` continues after the last completed epoch
    exactly as an uninterrupted run would have (the batches are a function of seed and epoch; weights, optimizer
    and seed-generator states come from the epoch backup), or, if training had finished, returns its result without
    training; a different fingerprint wipes it. `monitor` must be a validation metric ("val_..."), so the test set
    can never select the model. `max_train_minutes` stops after the last epoch whose successor would end past the
    budget (training time only, summed over resumed calls). The caller copies the outputs, then calls
    `clear_state(state_dir)`. The first epoch's timings include tracing and compiling the train function.

    `validate_every_steps` = N (fewer than an epoch's steps) cuts training into rounds of N steps instead of epochs:
    validation, the best-weights record, the budget check, the backup and the history then happen every round
    (the history's `epoch` counts rounds). The batches are the same stream as epoch by epoch; training runs whole
    rounds, ceil(epochs x steps per epoch / N) of them, so up to N - 1 steps of the next epoch's order may be added.
    """
    if not monitor.startswith("val_"):
        raise ValueError(f"monitor {monitor!r}: model selection must use a validation metric (val_...)")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: allowed: {', '.join(MODES)}")
    if epochs <= 0:
        raise ValueError(f"epochs: must be > 0, got {epochs}")
    if early_stopping_patience is not None and early_stopping_patience <= 0:
        raise ValueError(f"early_stopping_patience: must be > 0 or None, got {early_stopping_patience}")
    if max_train_minutes is not None and max_train_minutes <= 0:
        raise ValueError(f"max_train_minutes: must be > 0 or None, got {max_train_minutes}")
    if validate_every_steps is not None and validate_every_steps <= 0:
        raise ValueError(f"validate_every_steps: must be > 0 or None, got {validate_every_steps}")
    round_steps, rounds = _rounds(epochs, train.steps_per_epoch, validate_every_steps)

    # Settings that change what an epoch record means are part of the fingerprint.
    settings = (
        f"epochs={epochs} monitor={monitor} mode={mode} patience={early_stopping_patience} "
        f"budget={max_train_minutes} test_curve={test_curve is not None}"
        + (f" round_steps={round_steps}" if round_steps != train.steps_per_epoch else "")
    )
    with locked_state(state_dir):
        prepare_state_dir(state_dir, f"{fingerprint} | {settings}")
        progress_path = state_dir / PROGRESS
        if progress_path.exists():
            progress = json.loads(progress_path.read_text())
        else:
            progress = {"history": [], "best_epoch": None, "finished": False}
        progress.setdefault("stopped_early", False)
        progress.setdefault("stopped_by_budget", False)
        carried = len(progress["history"])

        if not progress["finished"]:
            if not model.built:  # the backup can only be loaded into existing weights
                model.build((None, *train.images.shape[1:]))
            initial_epoch = restore_backup(model, state_dir / BACKUP)
            tracker = _Progress(
                state_dir,
                epochs=rounds,
                monitor=monitor,
                mode=mode,
                patience=early_stopping_patience,
                budget_seconds=None if max_train_minutes is None else max_train_minutes * 60,
                train_examples=len(train.labels)
                if round_steps == train.steps_per_epoch
                else round_steps * train.batch_size,
                progress=progress,
            )
            if round_steps == train.steps_per_epoch:
                stream = train.epochs(initial_epoch, epochs)
                steps = None if epoch_followers(stream) else train.steps_per_epoch
            else:
                stream, steps = train.steps(initial_epoch * round_steps, rounds * round_steps), round_steps
            model.fit(
                stream,
                validation_data=val.once(),
                epochs=rounds,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                callbacks=[
                    *epoch_followers(stream),
                    *([test_curve] if test_curve else []),
                    tracker,
                    EpochBackup(state_dir / BACKUP),
                    *extra_callbacks,
                ],
                shuffle=False,  # the batches shuffle themselves; this only silences Keras' warning
                # A live progress bar in a terminal; in logs (dvc repro piped, CI) one line per epoch instead.
                verbose=1 if sys.stdout.isatty() else 2,
            )
            carried = tracker.first_epoch if tracker.first_epoch is not None else len(progress["history"])
        else:
            logger.info("%s holds a finished run; returning its result without training", state_dir)

        return _result(model, state_dir, progress, carried)


def _rounds(epochs: int, steps_per_epoch: int, validate_every_steps: int | None) -> tuple[int, int]:
    """(train steps per validation round, rounds): whole epochs unless validation comes more often than that."""
    if validate_every_steps is None or validate_every_steps >= steps_per_epoch:
        return steps_per_epoch, epochs
    return validate_every_steps, math.ceil(epochs * steps_per_epoch / validate_every_steps)


def _result(model: keras.Model, state_dir: Path, progress: dict[str, Any], carried: int) -> FitResult:
    history = progress["history"]
    best_epoch = progress["best_epoch"]
    if best_epoch is None:
        raise RuntimeError(f"no epoch produced a finite validation metric; see {state_dir / PROGRESS}")
    load_full_weights(model, _best_path(state_dir, best_epoch))
    keys = list(dict.fromkeys(k for entry in history for k in entry))
    columns = {k: [entry.get(k) for entry in history] for k in keys}
    # cumulative training time at the end of each epoch: the x axis of accuracy-against-time plots
    columns["train_minutes"] = [round(t / 60, 3) for t in itertools.accumulate(columns["train_seconds"])]
    best = history[best_epoch - 1]
    return FitResult(
        model=model,
        history=columns,
        best_epoch=best_epoch,
        best_metrics={k: v for k, v in best.items() if k not in _TIMING and not k.startswith(TEST_PREFIX)},
        epochs_run=len(history),
        train_seconds=sum(entry["train_seconds"] for entry in history),
        stopped_early=progress["stopped_early"],
        stopped_by_budget=progress["stopped_by_budget"],
        resumed_epochs=carried,
    )
