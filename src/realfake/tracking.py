"""MLflow at the edges: one run per stage, opened by stage scripts only.

The store defaults to `sqlite:///<repo>/mlflow.db` of the *main* repository: `dvc exp run --temp` and `--queue` run
stages in a copy under .dvc/tmp/exps and set DVC_ROOT to the main repo, so every experiment lands in one store.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values


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


def _use_experiment(name: str, repo_root: Path) -> None:
    """Select the experiment, creating it with its artifact folder beside the store."""
    import mlflow

    location = artifact_root(tracking_uri(repo_root))
    if location is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=location.resolve().as_uri())
        except Exception as exc:  # a parallel queued experiment may have created it a moment ago
            if "already exists" not in str(exc).lower():
                raise
    mlflow.set_experiment(name)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a sqlite store across processes.

    MLflow creates and migrates a new database on first use; two queued experiments doing that at once collide
    ("table alembic_version already exists"), which no retry repairs safely. Holding an exclusive lock on a file
    beside the database while selecting the experiment makes the second process find it ready.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:  # closing the file releases the lock, also on errors
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def git_commit(repo_root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def run_tags(stage: str, repo_root: Path) -> dict[str, str]:
    tags = {"stage": stage}
    if commit := git_commit(repo_root):
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    return tags


def _with_retries(action, *, attempts: int = 5, delay_s: float = 1.0):
    """Two queued experiments share one sqlite file; a locked database is worth a few retries."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # sqlite "database is locked" surfaces as several MLflow exception types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            log.warning("MLflow store busy (%s); retrying", exc)
            time.sleep(delay_s * (attempt + 1))
    return None


@contextmanager
def stage_run(
    stage: str, *, repo_root: Path, experiment: str, params: Mapping[str, Any], run_name: str | None = None
) -> Iterator[Any]:
    """Open an MLflow run for one stage; a stage that raises ends its run FAILED (KeyboardInterrupt: KILLED)."""
    import mlflow

    uri = tracking_uri(repo_root)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        _with_retries(lambda: _use_experiment(experiment, repo_root))
    run = _with_retries(lambda: mlflow.start_run(run_name=run_name or stage, tags=run_tags(stage, repo_root)))
    started = time.perf_counter()
    try:
        log_params(params)
        yield run
        log_metrics(resource_usage(started), prefix="stage.")
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def resource_usage(started: float) -> dict[str, float]:
    """Wall time since `started` and the peak resident memory of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(max(own, children), 1)}


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    from realfake.params import flatten

    flat = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(dict(params)).items()}
    _with_retries(lambda: mlflow.log_params(flat))


def log_metrics(metrics: Mapping[str, Any], *, step: int | None = None, prefix: str = "") -> None:
    """Log every numeric leaf of a nested dict, keys joined with '.' (MLflow keys allow dots and slashes)."""
    import mlflow

    numeric = _metric_values(metrics, prefix)
    if numeric:
        _with_retries(lambda: mlflow.log_metrics(numeric, step=step))


def _metric_values(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested dict as an MLflow metric: keys joined with '.', spaces made '_'."""
    from realfake.params import flatten

    return {
        f"{prefix}{k}".replace(" ", "_"): float(v)
        for k, v in flatten(dict(metrics)).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def log_artifacts(*paths: Path, artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


# What the registered pyfunc imports when it is served (realfake's own code travels inside the model).
SERVING_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "pandas", "pillow", "scikit-learn", "ruamel.yaml")


def log_registered_model(
    model_file: Path,
    *,
    registered_name: str,
    class_names: tuple[str, ...],
    image_shape: tuple[int, int, int],
    batch_size: int,
    metrics: Mapping[str, Any],
) -> Any:
    """Log `model_file` to the active run as a pyfunc (realfake.registry), register it as `registered_name` and
    log `metrics` (nested keys joined with '.') to the run and the logged model alike; returns MLflow's ModelInfo
    (registered_model_version among it).

    Requirements are pinned to this environment's versions instead of being inferred (inference loads the model
    in a subprocess: ~20 s of TensorFlow start-up per stage).
    """
    from importlib.metadata import version

    import mlflow

    import realfake
    from realfake import registry

    info = _with_retries(
        lambda: mlflow.pyfunc.log_model(
            name="model",
            python_model=registry.DetectorModel(class_names, batch_size),
            artifacts={registry.KERAS_ARTIFACT: str(model_file)},
            code_paths=[str(Path(realfake.__file__).parent)],
            signature=registry.signature(image_shape, class_names),
            pip_requirements=[f"{name}=={version(name)}" for name in SERVING_PACKAGES],
            registered_model_name=registered_name,
        )
    )
    numeric = _metric_values(metrics)
    if numeric:
        _with_retries(lambda: mlflow.log_metrics(numeric, model_id=info.model_id))
    return info
