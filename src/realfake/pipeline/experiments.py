"""Selecting the MLflow experiment when several stages (queued or parallel experiments) may open one store at once:
the first touch of a sqlite store is serialised, and a row a parallel writer made first counts as made."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realfake.pipeline.stores import TrackingStoreError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = float(os.environ.get("REALFAKE_TRACKING_LOCK_TIMEOUT", "300"))
# MLflow 3's experiment tag that picks the UI's layout; "custom_model_development" opens on the training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def artifact_root(uri: str) -> Path | None:
    """Beside a sqlite store, so artifacts never land in a temporary exp copy's working folder; None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a sqlite store across processes, saying so when it has to wait.

    MLflow creates and migrates a new database on first use; two queued experiments doing that at once collide
    ("table alembic_version already exists"). Holding an exclusive lock on a file beside the database while
    selecting the experiment makes the second process find it ready.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")  # its folder exists: `stores.check` saw to it
    timeout_s = LOCK_TIMEOUT_S
    with lock_path.open("a") as handle:  # closing the file releases the lock, also on errors
        deadline, said = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TrackingStoreError(
                        f"MLflow store lock {lock_path} stayed held for {timeout_s:.0f} s; another stage is opening "
                        "the store. If none runs, delete the lock file and run again"
                    ) from None
                if not said:
                    log.info("waiting for the MLflow store lock %s (another stage holds it)", lock_path)
                    said = True
                time.sleep(0.5)
        yield


def _already_exists(exc: Exception) -> bool:
    """Whether a write failed only because a parallel writer made the same row first: MLflow's own check, or the
    database's unique constraint (PostgreSQL behind a server reports it as BAD_REQUEST UniqueViolation)."""
    text = f"{exc} {getattr(exc, 'error_code', '')}".lower()
    words = ("already exists", "resource_already_exists", "uniqueviolation", "duplicate key", "unique constraint")
    return any(word in text for word in words)


def _tag_kind(client, experiment_id: str) -> None:
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as exc:  # a parallel experiment tagged it first: fine when the tag is there now
        if not (_already_exists(exc) and client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)):
            raise


def use_experiment(name: str, uri: str) -> str:
    """Select the experiment, creating it with its artifact folder beside a sqlite store; return its id."""
    import mlflow

    location = artifact_root(uri)
    if location is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=location.resolve().as_uri())
        except Exception as exc:  # a parallel queued experiment may have created it a moment ago
            if not _already_exists(exc):
                raise
    try:
        experiment = mlflow.set_experiment(name)
    except Exception as exc:  # on a server, set_experiment creates it: a parallel experiment may have won the race
        if not _already_exists(exc):
            raise
        experiment = mlflow.set_experiment(name)
    if (experiment.tags or {}).get(EXPERIMENT_KIND_TAG) is None:
        _tag_kind(mlflow.MlflowClient(uri), experiment.experiment_id)
    return experiment.experiment_id
