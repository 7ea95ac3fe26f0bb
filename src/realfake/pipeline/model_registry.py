"""The MLflow model registry at the edges: register a trained model as a version, keep the `champion` alias on the
version with the best validation score, and tag versions with their test metrics once evaluated."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from realfake.pipeline.tracking import _with_retries, enabled, metric_values

log = logging.getLogger(__name__)

CHAMPION = "champion"  # registry alias of the version with the best validation score


# What the registered pyfunc imports when it is served (realfake's own code travels inside the model).
SERVING_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "pandas", "pillow", "scikit-learn", "ruamel.yaml")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def log_registered_model(
    model_file: Path,
    *,
    registered_name: str,
    class_names: tuple[str, ...],
    image_shape: tuple[int, int, int],
    batch_size: int,
    summary: Mapping[str, Any],
    selection_metric: str | None = None,
    extra_artifacts: Mapping[str, Path] | None = None,
) -> Any:
    """Log `model_file` to the active run as a pyfunc (realfake.serving.registry), register it as `registered_name`,
    tag the version with `summary`'s numbers and the file's sha256, and move the `champion` alias to it when its
    `selection_metric` (a validation score in `summary`, higher is better) beats the champion's. Returns MLflow's
    ModelInfo (registered_model_version among it).

    Requirements are pinned to this environment's versions instead of being inferred (inference loads the model
    in a subprocess: ~20 s of TensorFlow start-up per stage).
    """
    if not enabled():
        return None
    from importlib.metadata import version

    import mlflow
    from mlflow.tracking import MlflowClient

    import realfake
    from realfake.serving import registry

    artifacts = {registry.KERAS_ARTIFACT: str(model_file)} | {k: str(v) for k, v in (extra_artifacts or {}).items()}
    with tempfile.TemporaryDirectory(prefix="realfake-code-") as tmp:
        # realfake's code travels with the model (its custom layers); the shipped detector does not
        code = Path(tmp) / "realfake"
        shutil.copytree(Path(realfake.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "detector"))
        info = _with_retries(
            lambda: mlflow.pyfunc.log_model(
                name="model",
                python_model=registry.DetectorModel(class_names, batch_size),
                artifacts=artifacts,
                code_paths=[str(code)],
                signature=registry.signature(image_shape, class_names),
                pip_requirements=[f"{name}=={version(name)}" for name in SERVING_PACKAGES],
                registered_model_name=registered_name,
            )
        )
    client = MlflowClient()
    number = str(info.registered_model_version)
    tags = {k: f"{v:.6g}" for k, v in metric_values(summary).items()}
    tags |= {"model_sha256": file_sha256(model_file), "run_id": mlflow.active_run().info.run_id}
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    for key, value in tags.items():
        _with_retries(lambda k=key, v=value: client.set_model_version_tag(registered_name, number, k, v))
    if selection_metric is not None:
        _crown_if_best(client, registered_name, number, float(metric_values(summary)[selection_metric]),
                       selection_metric)  # fmt: skip
    return info


def _crown_if_best(client, name: str, number: str, score: float, metric: str) -> None:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        best = float(champion.tags.get(metric, "-inf"))
    except Exception:  # noqa: BLE001  no champion yet
        best = float("-inf")
    if score > best:
        _with_retries(lambda: client.set_registered_model_alias(name, CHAMPION, number))
        log.info("registered %s version %s as @%s (%s %.4f)", name, number, CHAMPION, metric, score)


def tag_evaluated_version(registered_name: str, model_file: Path, metrics: Mapping[str, Any]) -> str | None:
    """Tag the registered version whose model file is `model_file` (by sha256) with `metrics`; its number, or None."""
    if not enabled():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    sha = file_sha256(model_file)
    try:
        versions = client.search_model_versions(f"name = '{registered_name}'")
    except Exception:  # noqa: BLE001  nothing registered under that name
        return None
    match = [v for v in versions if v.tags.get("model_sha256") == sha]
    if not match:
        return None
    number = str(max(int(v.version) for v in match))
    for key, value in metric_values(metrics).items():
        _with_retries(lambda k=key, v=value: client.set_model_version_tag(registered_name, number, k, f"{v:.6g}"))
    return number
