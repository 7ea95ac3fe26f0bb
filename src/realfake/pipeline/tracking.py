"""MLflow at the edges: one run per stage, opened by stage scripts only, nested under one parent run per pipeline
execution (a `dvc repro` or `dvc exp run`, named after the DVC experiment).

The store is MLFLOW_TRACKING_URI when set (e.g. a shared server, `make mlflow-server`), else
`sqlite:///<repo>/mlflow.db` of the *main* repository: `dvc exp run --temp` and `--queue` run stages in a copy under
.dvc/tmp/exps and set DVC_ROOT to the main repo, so every experiment lands in one store. A store that cannot be used
(corrupt, locked, unreachable) stops the stage with one line naming it and what to do. A run whose process died
without ending it (SIGKILL, a lost server) is marked FAILED by the next stage that opens the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from realfake.errors import RealfakeError
from realfake.pipeline import process

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./:]")  # what MLflow accepts in metric names, besides spaces
LOCK_TIMEOUT_S = float(os.environ.get("REALFAKE_TRACKING_LOCK_TIMEOUT", "300"))
# Run tags realfake sets (names in MLflow's UI)
TAG_STAGE, TAG_EXECUTION, TAG_PROCESS, TAG_HOST = "stage", "realfake.execution", "realfake.process", "realfake.host"


def enabled() -> bool:
    """False when REALFAKE_TRACKING=off (`pipeline.runner` on a host without MLflow): every call below does nothing."""
    return os.environ.get("REALFAKE_TRACKING", "on").lower() != "off"


class TrackingStoreError(RealfakeError):
    """The MLflow store cannot be used: corrupt, locked, or unreachable."""


def main_root(repo_root: Path) -> Path:
    """The main repository, also when DVC runs this stage in a temporary copy (it then sets DVC_ROOT)."""
    return Path(os.environ.get("DVC_ROOT") or repo_root).resolve()


def tracking_uri(repo_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite store in the main repo."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{main_root(repo_root) / 'mlflow.db'}"


def artifact_root(uri: str) -> Path | None:
    """Beside a sqlite store, so artifacts never land in a temporary exp copy's working folder; None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return None


def _store_problem(uri: str, exc: BaseException) -> TrackingStoreError:
    """One line naming the store, what is wrong and what to do."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "not a database" in text or "malformed" in text or "no such table" in text or "alembic" in text:
        path = uri.removeprefix("sqlite:///")
        what = (
            f"is not a usable MLflow database (corrupt or from another program). Move it aside to start a new store "
            f"(mv {path} {path}.broken), or point MLFLOW_TRACKING_URI at another store"
        )
    elif "locked" in text:
        what = "stayed locked by another process; wait for the other stage to finish, or stop it, and run again"
    elif any(word in text for word in ("connection", "refused", "max retries", "timed out", "unreachable")):
        what = (
            "cannot be reached; start the tracking server (make mlflow-server) or unset MLFLOW_TRACKING_URI to use "
            "the repository's own mlflow.db"
        )
    else:
        what = f"cannot be used ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
    return TrackingStoreError(f"MLflow store {uri} {what}")


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a sqlite store across processes, saying so when it has to wait.

    MLflow creates and migrates a new database on first use; two queued experiments doing that at once collide
    ("table alembic_version already exists"). Holding an exclusive lock on a file beside the database while
    selecting the experiment makes the second process find it ready.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
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


def _with_retries(action, *, attempts: int = 5, delay_s: float = 1.0):
    """Two queued experiments share one sqlite file; a locked database is worth a few retries."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # sqlite "database is locked" surfaces as several MLflow exception types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            log.warning("MLflow store busy; retrying (%s)", str(exc).splitlines()[0][:200])
            time.sleep(delay_s * (attempt + 1))
    return None


def _use_experiment(name: str, uri: str) -> str:
    """Select the experiment, creating it with its artifact folder beside a sqlite store; return its id."""
    import mlflow

    location = artifact_root(uri)
    if location is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=location.resolve().as_uri())
        except Exception as exc:  # a parallel queued experiment may have created it a moment ago
            if "already exists" not in str(exc).lower():
                raise
    return mlflow.set_experiment(name).experiment_id


def git_commit(repo_root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def run_tags(stage: str, repo_root: Path) -> dict[str, str]:
    tags = {TAG_STAGE: stage, TAG_HOST: socket.gethostname()}
    if ident := process.identity(os.getpid()):
        tags[TAG_PROCESS] = ident
    if commit := git_commit(repo_root):
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    return tags


def _reap_orphans(client, experiment_id: str) -> None:
    """Mark FAILED the RUNNING stage runs of this host whose process has died without ending them."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    )
    for run in running:
        ident = run.data.tags.get(TAG_PROCESS)
        if ident and not process.alive(ident):
            client.set_tag(run.info.run_id, "realfake.ended_by", "a later stage: its process had died")
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("MLflow run %s (%s) was left RUNNING by a dead process; marked FAILED", run.info.run_id,
                        run.info.run_name)  # fmt: skip


def _parent_run(client, experiment_id: str, repo_root: Path) -> str | None:
    """The id of this pipeline execution's parent run (created on its first stage), or None outside DVC."""
    execution = process.execution_id()
    if execution is None:
        return None
    experiment_name = os.environ.get("DVC_EXP_NAME")
    key = hashlib.sha1(f"{socket.gethostname()}|{execution}|{experiment_name}".encode()).hexdigest()[:16]
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_EXECUTION}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {TAG_EXECUTION: key, "realfake.kind": "pipeline"}
    tags |= {k: v for k, v in run_tags("pipeline", repo_root).items() if k not in (TAG_STAGE, TAG_PROCESS)}
    name = experiment_name or f"repro {time.strftime('%Y-%m-%d %H:%M')}"
    parent = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


@contextmanager
def stage_run(
    stage: str, *, repo_root: Path, experiment: str, params: Mapping[str, Any], run_name: str | None = None
) -> Iterator[Any]:
    """Open an MLflow run for one stage, nested under its execution's parent run.

    A stage that raises ends its run FAILED; Ctrl-C or SIGTERM (`process.Terminated`) ends it KILLED. The parent
    run takes each stage's outcome, so it is never left RUNNING either.
    """
    if not enabled():
        yield None
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(repo_root)
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):
            experiment_id = _with_retries(lambda: _use_experiment(experiment, uri))
            client = MlflowClient(uri)
            _reap_orphans(client, experiment_id)
            parent = _with_retries(lambda: _parent_run(client, experiment_id, repo_root))
        if parent:
            client.update_run(parent, status="RUNNING")
        run = _with_retries(
            lambda: mlflow.start_run(run_name=run_name or stage, tags=run_tags(stage, repo_root), parent_run_id=parent)
        )
    except TrackingStoreError:
        raise
    except Exception as exc:  # noqa: BLE001  SQLAlchemy, MLflow and HTTP errors alike: name the store instead
        raise _store_problem(uri, exc) from exc
    started = time.perf_counter()
    status = "FAILED"
    try:
        log_params(params)
        yield run
        log_metrics(resource_usage(started), prefix="stage.")
        status = "FINISHED"
    except (KeyboardInterrupt, process.Terminated):
        status = "KILLED"
        raise
    finally:
        _end(run.info.run_id, parent, status, uri)


def _end(run_id: str, parent: str | None, status: str, uri: str) -> None:
    """End the stage run (and set its parent) to `status`; a store that went away is reported, not raised, so the
    stage's own outcome stays the one the user sees. `mlflow.end_run` drops the active run before it calls the store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        mlflow.end_run(status=status)
        if parent:
            MlflowClient(uri).set_terminated(parent, status)
    except Exception as exc:  # noqa: BLE001  the next stage that reaches the store marks the run FAILED
        log.error("could not mark MLflow run %s %s in %s (%s)", run_id, status, uri, str(exc).splitlines()[0][:200])


def resource_usage(started: float) -> dict[str, float]:
    """Wall time since `started` and the peak resident memory of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(max(own, children), 1)}


def log_params(params: Mapping[str, Any]) -> None:
    if not enabled():
        return
    import mlflow

    from realfake.params import flatten

    flat = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(dict(params)).items()}
    _with_retries(lambda: mlflow.log_params(flat))


def log_metrics(metrics: Mapping[str, Any], *, step: int | None = None, prefix: str = "") -> None:
    """Log every numeric leaf of a nested dict, keys joined with '.' (MLflow keys allow dots and slashes)."""
    if not enabled():
        return
    import mlflow

    numeric = metric_values(metrics, prefix)
    if numeric:
        _with_retries(lambda: mlflow.log_metrics(numeric, step=step))


def set_tags(values: Mapping[str, Any], *, prefix: str = "") -> None:
    """Numeric leaves of a nested dict as run tags: summaries that are not per-step metrics."""
    if not enabled():
        return
    import mlflow

    tags = {k: f"{v:.6g}" for k, v in metric_values(values, prefix).items()}
    if tags:
        _with_retries(lambda: mlflow.set_tags(tags))


def metric_values(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested dict as an MLflow metric: keys joined with '.', any character MLflow refuses in
    a name (spaces, '+', ...) made '_'."""
    from realfake.params import flatten

    return {
        _METRIC_NAME.sub("_", f"{prefix}{k}"): float(v)
        for k, v in flatten(dict(metrics)).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def log_artifacts(*paths: Path, artifact_path: str | None = None) -> None:
    if not enabled():
        return
    import mlflow

    for path in paths:
        path = Path(path)
        if path.is_dir():
            _with_retries(lambda p=path: mlflow.log_artifacts(str(p), artifact_path=artifact_path))
        elif path.exists():
            _with_retries(lambda p=path: mlflow.log_artifact(str(p), artifact_path=artifact_path))
