"""The MLflow model registry at the edges: register a trained model as a version, keep the `champion` alias on the
version with the best validation score *among versions evaluated on the same data*, and give each version its test
metrics once evaluated (as MLflow 3 logged-model metrics, with the test split as their dataset, and as tags).

The fair-champion rule. Every version carries the tag `data_fingerprint` (DATA_FINGERPRINT): a digest of the archive
it was trained from (metrics/data.json's sha256), the validation and test split counts (metrics/prepare.json) and the
validation images of its training summary; also `data.archive_sha256`, `data.val_images`, `data.test_images`. A new
version takes `champion` from the current one only when both have the same fingerprint and its validation score is
higher: scores on different validation sets do not compare. Otherwise the champion stays, however high the newcomer's
score: a model validated on 100 images never beats one validated on 5,000. To crown a version evaluated on other
data, set the alias by hand (`MlflowClient().set_registered_model_alias(name, "champion", version)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from realfake.data.sources import sha256_of
from realfake.pipeline.tracking import _with_retries, enabled, log_metrics, metric_values

log = logging.getLogger(__name__)

CHAMPION = "champion"  # registry alias of the version with the best validation score
DATA_FINGERPRINT = "data_fingerprint"  # version tag: which data the version was validated and tested on
VAL_IMAGES = "data.val_images"  # version tag: the number of validation images its score was measured on
MODEL_ID = "model_id"  # version tag: the MLflow 3 logged model of the version
SELECTED = "selected."  # metric prefix of the selected (best validation) epoch's values in the train run

# What the registered pyfunc imports when it is served (realfake's own code travels inside the model).
SERVING_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "pandas", "pillow", "scikit-learn", "ruamel.yaml")
# What MLflow's onnx flavour needs to serve an export (`mlflow models serve` on ONNX Runtime, no TensorFlow).
ONNX_SERVING_PACKAGES = ("onnx", "onnxruntime", "mlflow", "numpy", "pandas")
ONNX_SUFFIX = "-onnx"  # registered name of a model's ONNX export: realfake-<name>-onnx


def tag_value(value: float) -> str:
    """A number as a version tag, in full: integers without a decimal point, others as Python's shortest exact form
    (0.9358, 0.93581234), never cut to a few digits."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def repo_of(model_file: Path) -> Path:
    """The repository a stage's models/<name>.keras belongs to."""
    return Path(model_file).resolve().parent.parent


def data_facts(root: Path, *, val_images: int | None = None) -> dict[str, str]:
    """The version tags that say which data a model was validated and tested on (see the module's docstring); {}
    when the repository has no metrics/data.json and metrics/prepare.json."""
    metrics = Path(root) / "metrics"
    data, prepare = _read_json(metrics / "data.json"), _read_json(metrics / "prepare.json")
    if not data or not prepare:
        return {}
    counts = prepare.get("counts") or {}
    sizes = prepare.get("sizes") or {}
    val = val_images if val_images is not None else sizes.get("val")
    facts = {"archive_sha256": data.get("sha256"), "val": counts.get("val"), "test": counts.get("test"),
             "val_images": val}  # fmt: skip
    fingerprint = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return {DATA_FINGERPRINT: fingerprint, "data.archive_sha256": str(data.get("sha256")),
            VAL_IMAGES: str(val), "data.test_images": str(sizes.get("test"))}  # fmt: skip


REGISTRY_NOTICES = ("Successfully registered model", "Created version", "Registered model ")


@contextlib.contextmanager
def _without_type_hint_notice():
    """Drop MLflow's hint to add type hints to a PythonModel's `predict` (DetectorModel's signature is given
    explicitly). MLflow raises it under its own `simplefilter("once")`, which overrides any filter of ours, so the
    notice is dropped where warnings are shown."""
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if "Add type hints to the `predict` method" not in str(message):
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


@contextlib.contextmanager
def quiet_mlflow_logging():
    """MLflow's notices while it logs and registers a model (a CloudPickle caution, a type-hint hint for a model whose
    signature is given, input-example validation, "Successfully registered", artifact progress bars) say nothing
    the stage's own line does not: keep its warnings and errors only."""
    names = ("mlflow.pyfunc", "mlflow.models", "mlflow.tracking._model_registry", "mlflow.store.artifact")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), _without_type_hint_notice(), contextlib.redirect_stderr(captured):
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the CloudPickle caution is a WARNING
            yield
    finally:
        for line in captured.getvalue().splitlines(keepends=True):  # MLflow prints its registry notices itself
            if not line.startswith(REGISTRY_NOTICES):
                sys.stderr.write(line)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


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
    data_root: Path | None = None,
) -> Any:
    """Log `model_file` to the active run as a pyfunc (realfake.serving.registry), register it as `registered_name`,
    tag the version with `summary`'s numbers, the file's sha256 and its data fingerprint (from `data_root`'s metrics,
    default: the repository of `model_file`), and move the `champion` alias to it when its `selection_metric` (a
    validation score in `summary`, higher is better) beats the champion's on the same data (see the module's
    docstring). The selected epoch's values go to the run as `selected.<metric>` metrics. Returns MLflow's ModelInfo
    (registered_model_version among it).

    Requirements are pinned to this environment's versions instead of being inferred (inference loads the model
    in a subprocess: ~20 s of TensorFlow start-up per stage).
    """
    if not enabled():
        return None
    from importlib.metadata import version

    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    import realfake

    with _without_type_hint_notice():
        from realfake.serving import registry

    if isinstance(summary.get("best"), Mapping):
        log_metrics(summary["best"], prefix=SELECTED)
        if isinstance(summary.get("best_epoch"), int):
            log_metrics({"epoch": summary["best_epoch"]}, prefix=SELECTED)
    artifacts = {registry.KERAS_ARTIFACT: str(model_file)} | {k: str(v) for k, v in (extra_artifacts or {}).items()}
    with tempfile.TemporaryDirectory(prefix="realfake-code-") as tmp:
        # realfake's code travels with the model (its custom layers); the shipped detector does not
        code = Path(tmp) / "realfake"
        shutil.copytree(Path(realfake.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "detector"))
        with quiet_mlflow_logging():
            info = _with_retries(
                lambda: mlflow.pyfunc.log_model(
                    name="model",
                    python_model=registry.DetectorModel(class_names, batch_size),
                    artifacts=artifacts,
                    code_paths=[str(code)],
                    signature=registry.signature(image_shape, class_names),
                    input_example={registry.INPUT_NAME: np.zeros((1, *image_shape), np.uint8)},
                    pip_requirements=[f"{name}=={version(name)}" for name in SERVING_PACKAGES],
                    registered_model_name=registered_name,
                )
            )
    client = MlflowClient()
    number = str(info.registered_model_version)
    values = metric_values(summary)
    tags = {k: tag_value(v) for k, v in values.items()}
    tags |= {"model_sha256": sha256_of(model_file), "run_id": mlflow.active_run().info.run_id}
    if getattr(info, "model_id", None):  # the logged model (MLflow 3), which evaluate gives its test metrics
        tags[MODEL_ID] = str(info.model_id)
    val_images = summary.get("val_images") if isinstance(summary.get("val_images"), int) else None
    tags |= data_facts(data_root or repo_of(model_file), val_images=val_images)
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    for key, value in tags.items():
        _with_retries(lambda k=key, v=value: client.set_model_version_tag(registered_name, number, k, v))
    if selection_metric is not None:
        _crown_if_best(client, registered_name, number, float(values[selection_metric]), selection_metric, tags)
    return info


def onnx_signature(image_shape: tuple[int, int, int], classes: int, features: int):
    """float32 pixel values 0..255 (-1, height, width, 3) as `images` in; the export's three outputs out."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    outputs = [("probabilities", (-1, classes)), ("p_fake", (-1,)), ("features", (-1, features))]
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, *image_shape), name="images")]),
        outputs=Schema([TensorSpec(f32, shape, name=name) for name, shape in outputs]),
    )


def log_registered_onnx(onnx_file: Path, *, registered_name: str, extra_artifacts: Mapping[str, Path] | None = None):
    """Log the ONNX export `onnx_file` (models.onnx_export) to the active run with MLflow's onnx flavour and register
    it as `registered_name` (realfake-<name>-onnx), so that `mlflow models serve -m models:/NAME/N` answers on ONNX
    Runtime. The version is tagged with the file's sha256 and the sha256 of the .keras file it was exported from.
    Returns MLflow's ModelInfo, or None with tracking off."""
    if not enabled():
        return None
    from importlib.metadata import version

    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.tracking import MlflowClient

    model = onnx.load(str(onnx_file))
    meta = {prop.key: prop.value for prop in model.metadata_props}
    width, height = json.loads(meta["realfake.input_size"])
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    signature = onnx_signature((height, width, 3), dims["probabilities"][-1], dims["features"][-1])
    with quiet_mlflow_logging():
        info = _with_retries(
            lambda: mlflow.onnx.log_model(
                model, name="model", signature=signature, registered_model_name=registered_name,
                pip_requirements=[f"{name}=={version(name)}" for name in ONNX_SERVING_PACKAGES],
                extra_files=[str(p) for p in (extra_artifacts or {}).values()] or None, save_as_external_data=False,
            )
        )  # fmt: skip
    client, number = MlflowClient(), str(info.registered_model_version)
    tags = {"model_sha256": sha256_of(onnx_file), "source_sha256": meta.get("realfake.source_sha256", ""),
            "run_id": mlflow.active_run().info.run_id}  # fmt: skip
    for key, value in tags.items():
        _with_retries(lambda k=key, v=value: client.set_model_version_tag(registered_name, number, k, v))
    return info


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("-inf")


def takes_champion(new: Mapping[str, str], champion: Mapping[str, str] | None, metric: str) -> tuple[bool, str]:
    """Whether a version tagged `new` takes `champion` from the version tagged `champion` (None: there is none),
    and why (see the module's docstring). Tags are the registry's: strings."""
    if champion is None:
        return True, "the first version"
    if new.get(DATA_FINGERPRINT) == champion.get(DATA_FINGERPRINT):
        better = _number(new.get(metric)) > _number(champion.get(metric))
        return better, f"{metric} {'above' if better else 'not above'} the champion's on the same data"
    return False, "validated on other data than the champion (its score does not compare)"


def _crown_if_best(client, name: str, number: str, score: float, metric: str, tags: Mapping[str, str]) -> None:
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001  no champion yet
        current = None
    take, why = takes_champion(tags, None if current is None else current.tags, metric)
    if take:
        _with_retries(lambda: client.set_registered_model_alias(name, CHAMPION, number))
        log.info("registered %s version %s as @%s (%s %.4f: %s)", name, number, CHAMPION, metric, score, why)
    else:
        log.info("%s version %s registered; @%s stays on version %s (%s)", name, number, CHAMPION, current.version,
                 why)  # fmt: skip


def _test_dataset(root: Path, facts: Mapping[str, str]):
    """The test split as an MLflow dataset (its file as source, the data fingerprint as digest), or None."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    # a plain description of where the split is (resolving a path finds two equal local source types, and warns)
    source = CodeDatasetSource({"split": "test", "file": str(Path(root) / "data" / "prepared" / "test.npz")})
    return MetaDataset(source, name="cifake-test", digest=facts.get(DATA_FINGERPRINT))


def tag_evaluated_version(
    registered_name: str, model_file: Path, metrics: Mapping[str, Any], *, data_root: Path | None = None
) -> str | None:
    """Give the registered version whose model file is `model_file` (by sha256) `metrics`: as the logged model's
    metrics (with the test split of `data_root`, default the repository of `model_file`, as their dataset) when a run
    is active, and as version tags in full. Its number, or None when no version holds that file."""
    if not enabled():
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    sha = sha256_of(model_file)
    try:
        versions = client.search_model_versions(f"name = '{registered_name}'")
    except Exception:  # noqa: BLE001  nothing registered under that name
        return None
    match = [v for v in versions if v.tags.get("model_sha256") == sha]
    if not match:
        return None
    version = max(match, key=lambda v: int(v.version))
    number = str(version.version)
    values = metric_values(metrics)
    for key, value in values.items():
        _with_retries(lambda k=key, v=value: client.set_model_version_tag(registered_name, number, k, tag_value(v)))
    model_id = getattr(version, "model_id", None) or version.tags.get(MODEL_ID)
    if model_id and mlflow.active_run() is not None and values:
        root = data_root or repo_of(model_file)
        dataset = _test_dataset(root, data_facts(root))
        _with_retries(lambda: mlflow.log_metrics(values, model_id=model_id, dataset=dataset))
    return number
