"""MLflow at the edges: one run per stage, opened by stage scripts only, nested under one parent run per pipeline
execution (a `dvc repro` or `dvc exp run`, named after the DVC experiment).

The store is MLFLOW_TRACKING_URI when set (e.g. a shared server, `make mlflow-server`), else
`sqlite:///<repo>/mlflow.db` of the *main* repository: `dvc exp run --temp` and `--queue` run stages in a copy under
.dvc/tmp/exps and set DVC_ROOT to the main repo, so every experiment lands in one store. A store that cannot be used
(corrupt, locked, read-only, unreachable, not MLflow's) stops the stage with one line naming it and what to do
(`stores`). A run whose process died without ending it (SIGKILL, a lost server) is marked FAILED by the next stage
that opens the store, and a parent run none of whose stages still runs is ended too. Stage runs are named
`<experiment>/<stage>`; the parent run carries the experiment's changed params, recipe and headline metrics
(`parent_runs`). The MLflow experiment is tagged as a model-training one, so MLflow's UI opens on its runs.
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

from realfake.pipeline import parent_runs, process, stores
from realfake.pipeline.experiments import store_lock, use_experiment
from realfake.pipeline.process import resource_usage
from realfake.pipeline.stores import TrackingStoreError

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./:]")  # what MLflow accepts in metric names, besides spaces
# Run tags realfake sets (names in MLflow's UI)
TAG_STAGE, TAG_EXECUTION, TAG_PROCESS, TAG_HOST = "stage", "realfake.execution", "realfake.process", "realfake.host"
_last_end: dict[str, Any] = {}  # how the last stage run of this process ended (see `last_end`)


def enabled() -> bool:
    """False when REALFAKE_TRACKING=off (`pipeline.runner` on a host without MLflow): every call below does nothing."""
    return os.environ.get("REALFAKE_TRACKING", "on").lower() != "off"


def main_root(repo_root: Path) -> Path:
    """The main repository, also when DVC runs this stage in a temporary copy (it then sets DVC_ROOT)."""
    return Path(os.environ.get("DVC_ROOT") or repo_root).resolve()


def tracking_uri(repo_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite store in the main repo."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{main_root(repo_root) / 'mlflow.db'}"


def _store_problem(uri: str, exc: BaseException) -> TrackingStoreError:
    """One line naming the store, what is wrong and what to do (see `stores.problem`)."""
    return stores.problem(uri, exc)


# Errors of two experiments writing one store at once that a retry resolves: a locked SQLite file, and two inserts
# of the same row (MLflow creates a shared dataset, e.g. the test split, with a check-then-insert that races: the loser
# gets PostgreSQL's "duplicate key" or SQLite's "UNIQUE constraint failed", and on retry finds the row).
RETRYABLE_STORE_ERRORS = ("locked", "duplicate key", "unique constraint")


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` is a concurrent-writer race that the same request, repeated, gets past."""
    text = str(exc).lower()
    return any(marker in text for marker in RETRYABLE_STORE_ERRORS)


def _with_retries(action, *, attempts: int = 5, delay_s: float = 1.0):
    """Queued experiments share one store; a race with another writer is worth a few retries (`is_retryable`)."""
    for attempt in range(attempts):
        try:
            with process.shielded():
                return action()
        except Exception as exc:  # the same race surfaces as several MLflow exception types
            if not is_retryable(exc) or attempt == attempts - 1:
                raise
            log.warning("MLflow store busy; retrying (%s)", str(exc).splitlines()[0][:200])
            time.sleep(delay_s * (attempt + 1))
    return None


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
    """Mark FAILED the RUNNING stage runs of this host whose process has died without ending them; then end the
    parent runs of this host none of whose stages still runs (`parent_runs.reap`)."""
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
    parent_runs.reap(client, experiment_id, TAG_HOST, host)


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
    tags = {TAG_EXECUTION: key, parent_runs.KIND: parent_runs.PIPELINE}
    tags |= {k: v for k, v in run_tags("pipeline", repo_root).items() if k not in (TAG_STAGE, TAG_PROCESS)}
    name = experiment_name or f"repro {time.strftime('%Y-%m-%d %H:%M')}"
    parent = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(parent.info.run_id, "FINISHED")
    parent_runs.describe(client, parent.info.run_id, repo_root)
    return parent.info.run_id


def stage_run_name(stage: str, run_name: str | None = None) -> str:
    """`<experiment>/<stage>` inside a named DVC experiment (`cpu-quick-seed42/train@fast`), else the stage's name."""
    name = run_name or stage
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{experiment}/{name}" if experiment else name


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
    _last_end.clear()
    try:
        stores.check(uri)
        mlflow.set_tracking_uri(uri)
        with store_lock(uri):
            experiment_id = _with_retries(lambda: use_experiment(experiment, uri))
            client = MlflowClient(uri)
            _with_retries(lambda: _reap_orphans(client, experiment_id))
            parent = _with_retries(lambda: _parent_run(client, experiment_id, repo_root))
        tags = run_tags(stage, repo_root)
        run = _with_retries(
            lambda: mlflow.start_run(run_name=stage_run_name(stage, run_name), tags=tags, parent_run_id=parent)
        )
        if parent:  # after the stage run exists: a RUNNING parent always has a RUNNING stage, or an orphan
            client.update_run(parent, status="RUNNING")
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
        if parent and stage == "evaluate" and isinstance(params.get("model"), str):
            _headline_to_parent(client, parent, repo_root, params["model"])
        status = "FINISHED"
    except (KeyboardInterrupt, process.Terminated):
        status = "KILLED"
        raise
    finally:
        accepted = _end(run.info.run_id, parent, status, uri)
        _last_end.update(run_id=run.info.run_id, status=status, accepted=accepted, uri=uri)


def _headline_to_parent(client, parent: str, repo_root: Path, model: str) -> None:
    """The evaluated model's headline metrics on the parent run; a failure there is reported, not raised."""
    try:
        _with_retries(lambda: parent_runs.log_headline(client, parent, repo_root, model))
    except Exception as exc:  # noqa: BLE001  the stage's own results are written and logged already
        log.warning("could not put %s's headline metrics on the parent run %s (%s)", model, parent,
                    str(exc).splitlines()[0][:200])  # fmt: skip


def last_end() -> dict[str, Any]:
    """How the last stage run of this process ended: {run_id, status, accepted (the store took the status), uri};
    {} when no run was opened (tracking off, or the store refused before the run started)."""
    return dict(_last_end)


def _end(run_id: str, parent: str | None, status: str, uri: str) -> bool:
    """End the stage run (and set its parent) to `status`; whether the store took it. A store that went away is
    reported, not raised, so the stage's own outcome stays the one the user sees. `mlflow.end_run` drops the active
    run before it calls the store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        with process.shielded():
            try:
                mlflow.end_run(status=status)
            except Exception:  # noqa: BLE001  the fluent run is dropped already; a fresh client tries once more
                time.sleep(1.0)
                MlflowClient(uri).set_terminated(run_id, status)
            if parent:
                _with_retries(lambda: MlflowClient(uri).set_terminated(parent, status))
    except Exception as exc:  # noqa: BLE001  the next stage that reaches the store marks the run FAILED
        log.error("could not mark MLflow run %s %s in %s (%s)", run_id, status, uri, str(exc).splitlines()[0][:200])
        return False
    return True


def log_params(params: Mapping[str, Any]) -> None:
    if not enabled():
        return
    import mlflow

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


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; a params section becomes its settings."""
    if hasattr(tree, "model_dump"):
        tree = tree.model_dump()
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
