"""Choosing the model to classify with: the one named (`.onnx`, `.keras` or an MLflow URI), else the best binary model
of the repository's pipeline, else the detector shipped with realfake; with its detector extras, its decision
threshold and its measured accuracy on resized images.

An `.onnx` model runs without TensorFlow; a pipeline model is run from its ONNX export (models/<name>.onnx) when that
was exported from the very .keras file beside it (the SHA-256 its metadata records), else through Keras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from realfake.data.sources import sha256_of
from realfake.errors import DataError
from realfake.models.detector import DetectorInfo, load_info
from realfake.paths import ProjectPaths
from realfake.serving.engines import BINARY_CLASSES, KerasEngine, OnnxEngine, extras_beside

log = logging.getLogger(__name__)

# Without a threshold stored with the model (its card or its evaluate report): for calibrated probabilities 0.5 is
# the decision point that minimises errors.
FALLBACK_THRESHOLD = 0.5
# The robustness column whose accuracy predict cites when it resizes an image.
RESIZE_PERTURBATION = "downscale_2"
# scheme:/... with a scheme of two or more letters (models:/, runs:/, s3://, mlflow-artifacts://); a single letter
# followed by ":/" is a Windows drive, i.e. a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

# The detectors that ship inside the package, one folder each named after the recipe that trained it
# (detector/<recipe>/: <model>.onnx, <model>.keras, <model>.detector.npz, card.json, MODEL_CARD.md); the file DEFAULT
# names the one predict and serve use (`--model shipped`); `--model shipped:<recipe>` picks another.
SHIPPED = Path(__file__).with_name("detector")
SHIPPED_PREFIX = "shipped"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    engine: OnnxEngine | KerasEngine
    name: str  # what the output's model column shows
    source: str  # where it was loaded from (a file or an MLflow URI)
    info: DetectorInfo | None = None  # thresholds and OOD statistics stored beside the model, when there are any
    resized_accuracy: float | None = None  # measured accuracy on images downscaled 2x and back, when known
    threshold: float = FALLBACK_THRESHOLD  # the decision threshold the model was evaluated at
    card: dict | None = None  # a shipped detector's card.json
    model_card: Path | None = None  # a shipped detector's MODEL_CARD.md

    @property
    def model(self):
        """The Keras model (None for an ONNX one)."""
        return getattr(self.engine, "model", None)


def is_mlflow_uri(spec: str) -> bool:
    return bool(_URI.match(spec))


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above `start` that holds dvc.yaml; `start` itself when there is none."""
    start = Path(start).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / "dvc.yaml").is_file()), start)


def store_uri(root: Path) -> str | None:
    """The MLflow store to read models:/ URIs from: MLFLOW_TRACKING_URI, else the main repo's mlflow.db (DVC_ROOT
    in a temporary experiment copy) when there is one."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    db = Path(os.environ.get("DVC_ROOT") or root).resolve() / "mlflow.db"
    return f"sqlite:///{db}" if (root / "mlflow.db").is_file() or db.is_file() else None


def val_accuracies(paths: ProjectPaths) -> list[tuple[str, float]]:
    """(model name, best validation accuracy) of every trained model, highest first.

    Reads metrics/train/<name>.json (`best.val_accuracy`, measured on the validation split carved from train;
    test metrics never choose a model) for names whose models/<name>.keras exists.
    """
    scores = []
    for metrics_file in sorted((paths.metrics / "train").glob("*.json")):
        name = metrics_file.stem
        if not paths.model_file(name).is_file():
            log.info("%s: no %s, skipped", metrics_file, paths.model_file(name))
            continue
        try:
            accuracy = float(json.loads(metrics_file.read_text())["best"]["val_accuracy"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: no best.val_accuracy (%s); model %s skipped", metrics_file, exc, name)
            continue
        scores.append((name, accuracy))
    return sorted(scores, key=lambda score: -score[1])


def has_pipeline_models(paths: ProjectPaths) -> bool:
    return bool(val_accuracies(paths))


def _json_value(path: Path, *keys):
    try:
        value = json.loads(path.read_text())
        for key in keys:
            value = value[key]
        return float(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_export(keras_file: Path) -> Path | None:
    """models/<name>.onnx when it was exported from `keras_file` as it is now (the SHA-256 in its metadata)."""
    onnx_file = keras_file.with_suffix(".onnx")
    if not onnx_file.is_file():
        return None
    try:
        engine = OnnxEngine(onnx_file)
    except DataError as exc:
        log.warning("%s", exc)
        return None
    if engine.metadata.get("realfake.source_sha256") != sha256_of(keras_file):
        log.warning("%s was exported from another version of %s: using the .keras file", onnx_file, keras_file.name)
        return None
    return onnx_file


def quiet_keras() -> None:
    """Start Keras' backend with its C++ start-up lines (CUDA probing, CPU-feature notices) silenced: they would bury
    realfake's own messages. REALFAKE_NATIVE_LOGS=1 shows them."""
    from realfake import quiet_native_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native_stderr():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes the GPUs now, while silenced


def keras_engine(path: Path, *, rebuild_with: str) -> KerasEngine:
    quiet_keras()
    from realfake.models.saving import load_model

    return KerasEngine(load_model(path, rebuild_with=rebuild_with))


def file_engine(path: Path, *, rebuild_with: str) -> OnnxEngine | KerasEngine:
    """An ONNX engine for a .onnx file, else a Keras one."""
    return OnnxEngine(path) if path.suffix.lower() == ".onnx" else keras_engine(path, rebuild_with=rebuild_with)


def best_binary_model(paths: ProjectPaths, *, keras_only: bool = False) -> tuple[LoadedModel, float]:
    """The binary (real/fake) model with the highest validation accuracy, and that accuracy.

    Candidates are loaded best first until one has one or two outputs, so the 3-class model is passed over.
    """
    for name, accuracy in val_accuracies(paths):
        path = paths.model_file(name)
        exported = None if keras_only else current_export(path)
        engine = file_engine(exported or path, rebuild_with=f"dvc repro train@{name}")
        if engine.class_names == BINARY_CLASSES:
            resized = _json_value(paths.metrics / "robustness" / f"{name}.json", "scores", RESIZE_PERTURBATION,
                                  "accuracy")  # fmt: skip
            threshold = _json_value(paths.metrics / "evaluate" / f"{name}.json", "threshold")
            threshold = FALLBACK_THRESHOLD if threshold is None else threshold
            loaded = LoadedModel(engine, name, str(exported or path), extras_beside(path), resized, threshold)
            return loaded, accuracy
        log.info("%s: %d classes, not a binary real/fake model; skipped", path, len(engine.class_names))
    raise DataError(
        f"no trained binary model in {paths.models} with its metrics in {paths.metrics / 'train'}: "
        "run `dvc repro` there, or pass --model"
    )


@dataclasses.dataclass(frozen=True)
class ShippedDetector:
    """One detector shipped inside the package: its folder and its card (what trained it, its measured metrics)."""

    name: str  # the recipe that trained it, and the folder's name
    folder: Path
    card: dict

    def file(self, kind: str) -> Path:
        """Its `kind` file ("onnx", "keras", "detector"), as its card names it."""
        name = self.card.get("files", {}).get(kind)
        if not name:
            raise DataError(f"{self.folder / 'card.json'}: names no {kind} file; reinstall realfake")
        return self.folder / Path(name).name  # inside its own folder, whatever the card says

    @property
    def model_card(self) -> Path:
        return self.folder / "MODEL_CARD.md"


def shipped_names() -> list[str]:
    """The shipped detectors' names (recipes), sorted; the default first."""
    names = sorted(card.parent.name for card in SHIPPED.glob("*/card.json"))
    default = default_shipped_name()
    return sorted(names, key=lambda name: name != default)


def default_shipped_name() -> str | None:
    """The detector that DEFAULT names (the one `make ship` shipped last), or None when there is none."""
    try:
        return (SHIPPED / "DEFAULT").read_text().strip() or None
    except OSError:
        return None


def shipped_detector(name: str | None = None) -> ShippedDetector:
    """The shipped detector `name` (a recipe), by default the one DEFAULT names."""
    name = name or default_shipped_name()
    card = None
    if name in shipped_names():  # only a folder that is there: a name is never a path
        with contextlib.suppress(OSError, ValueError):
            card = json.loads((SHIPPED / name / "card.json").read_text())
    if card is None:
        known = ", ".join(f"{SHIPPED_PREFIX}:{n}" for n in shipped_names()) or "none"
        what = f"no shipped detector {name!r}" if name else "no default shipped detector (DEFAULT)"
        raise DataError(f"{SHIPPED}: {what}; shipped here: {known}. Reinstall realfake if none is")
    return ShippedDetector(name, SHIPPED / name, card)


def shipped_validation_accuracy(name: str | None = None) -> float | None:
    """A shipped detector's best validation accuracy, from its card (None when there is none or it does not say)."""
    try:
        value = shipped_detector(name).card.get("train", {}).get("best", {}).get("val_accuracy")
    except DataError:
        return None
    return None if value is None else float(value)


def shipped_model(name: str | None = None, *, keras: bool = False) -> LoadedModel:
    """A detector shipped with the package (by default the default one): its ONNX export, or with `keras` its
    .keras file, with its thresholds, OOD statistics and card (test metrics and measured robustness)."""
    detector = shipped_detector(name)
    path = detector.file("keras" if keras else "onnx")
    if not path.is_file():
        raise DataError(f"{path}: the shipped detector is missing from this installation; reinstall realfake")
    engine = file_engine(path, rebuild_with="pip install --force-reinstall realfake")
    card = detector.card
    resized = card.get("robustness", {}).get(RESIZE_PERTURBATION)
    threshold = float(card.get("test", {}).get("threshold", FALLBACK_THRESHOLD))
    model_card = detector.model_card if detector.model_card.is_file() else None
    label = f"{SHIPPED_PREFIX}:{detector.name}"
    return LoadedModel(engine, label, str(path), extras_beside(path), resized, threshold, card, model_card)


@contextlib.contextmanager
def _mlflow_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` meanwhile. MLflow resolves a models:/ URI in the registry of its global
    settings whatever store download_artifacts is given (the registry defaults to the tracking URI, and that to
    ./mlflow.db, which it would create), so the store named by --repo or MLFLOW_TRACKING_URI must be set there too."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def download_model_files(uri: str, *, tracking_uri: str, dst: Path) -> tuple[Path, Path | None]:
    """Download an MLflow artifact URI (models:/..., models:/name@alias, runs:/...) into `dst`: (the one .keras file
    it holds, the detector extras logged with it or None)."""
    import mlflow

    try:
        with _mlflow_store(tracking_uri):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri
                )
            )
    except Exception as exc:  # noqa: BLE001  the store, the registry and the transport each raise their own types
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DataError(f"{uri}: could not download it from the MLflow store {tracking_uri} ({first})") from exc
    files = ([local] if local.suffix == ".keras" else []) if local.is_file() else _logged_files(local, "*.keras")
    if not files:
        raise DataError(f"{uri}: the downloaded artifact holds no .keras file")
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(local)) for f in files)
        raise DataError(f"{uri}: holds several .keras files ({names}); add the one you want to the URI")
    extras = files[0].with_name(files[0].name.removesuffix(".keras") + ".detector.npz")  # logged beside the model
    return files[0], (extras if extras.is_file() else None)


def _logged_files(folder: Path, pattern: str) -> list[Path]:
    """Files under `folder` matching `pattern`, except inside a logged pyfunc model's `code/` folder: that is a copy
    of realfake's own source, which holds the shipped detector (serving/detector/), not the model logged."""
    found = []
    for path in sorted(folder.rglob(pattern)):
        parts = path.relative_to(folder).parts
        in_code = any(
            part == "code" and (folder.joinpath(*parts[:i]) / "MLmodel").is_file() for i, part in enumerate(parts[:-1])
        )
        if not in_code:
            found.append(path)
    return found


def load_named_model(spec: str, *, tracking_uri: str | None) -> LoadedModel:
    """A model from a .onnx or .keras path, or an MLflow artifact URI (then downloaded from the store at
    `tracking_uri` and run through Keras)."""
    if is_mlflow_uri(spec):
        if tracking_uri is None:
            raise DataError(
                f"{spec}: no MLflow store to read it from here. Pass --repo PATH (a realfake checkout with its "
                "mlflow.db) or set MLFLOW_TRACKING_URI to the store or server"
            )
        with tempfile.TemporaryDirectory(prefix="realfake-model-") as tmp:
            path, extras = download_model_files(spec, tracking_uri=tracking_uri, dst=Path(tmp))
            engine = keras_engine(path, rebuild_with=f"mlflow (re-log {spec})")
            info = load_info(extras) if extras else None
        return LoadedModel(engine, spec, spec, info)
    path = Path(spec)
    engine = file_engine(path, rebuild_with="dvc repro")
    return LoadedModel(engine, path.stem, str(path), extras_beside(path))
