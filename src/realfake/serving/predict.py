"""Classify image files with a trained model: find, decode and resize images, pick or fetch a model, score them.

Every image is turned into exactly what the models were trained on: 32x32 (the model's input size) RGB uint8
pixels, fed as float32. Images that already have the model's size are NOT resampled, so a CIFAKE JPEG gives the
very pixels `prepare` decoded from it. Files that cannot be read are reported, never guessed at.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from realfake.data.images import fit, to_rgb
from realfake.data.threeclass import THREE_CLASSES as SOURCE_KINDS
from realfake.errors import DataError, RealfakeError
from realfake.evaluation.scoring import p_fake, predict_labels, predict_proba
from realfake.models.detector import DetectorInfo, info_path, load_info
from realfake.paths import ProjectPaths

if TYPE_CHECKING:  # importing keras pulls in TensorFlow
    import keras

log = logging.getLogger(__name__)

# Files a folder is searched for (lower-case suffixes); a file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Decompression-bomb guard: 50 megapixels (an 8660x5773 photo, ~150 MB decoded as RGB) is far above any photo a
# 32x32 detector needs and keeps a hostile file from exhausting memory. Pillow's own guard (Image.MAX_IMAGE_PIXELS,
# which the CLI sets to this) checks the header inside Image.open; load_image checks again, so it holds for any
# caller.
MAX_PIXELS = 50_000_000


BINARY_CLASSES = ("real", "fake")
# The robustness column whose accuracy predict cites when it resizes an image.
RESIZE_PERTURBATION = "downscale_2"
# scheme:/... with a scheme of two or more letters (models:/, runs:/, s3://, mlflow-artifacts://); a single letter
# followed by ":/" is a Windows drive, i.e. a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class UnreadableImageError(RealfakeError):
    """One file cannot be classified (not an image, damaged, too large); the others still can."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str  # as given, undecodable bytes of the file name written as \\xNN
    p_fake: float
    label: str
    model: str
    resampled: bool  # the image was not the model's size and was cropped and resized to it
    ood: bool | None  # out of distribution (verdict unreliable); None when the model has no OOD statistics
    ood_score: float | None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: keras.Model
    name: str  # what the output's model column shows
    source: str  # where it was loaded from (a file or an MLflow URI)
    info: DetectorInfo | None = None  # thresholds and OOD statistics stored beside the model, when there are any
    resized_accuracy: float | None = None  # measured accuracy on images downscaled 2x and back, when known


def display_path(path: Path) -> str:
    """A path as text that any terminal or JSON reader takes: undecodable bytes of a file name become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_regular_file(path: Path) -> bool:
    """True for a regular file (following symlinks): FIFOs, devices and sockets would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


# ---- finding and decoding images -----------------------------------------------------------------


def find_images(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(path, problem)]): files as given, folders searched recursively for IMAGE_EXTENSIONS.

    Folder contents are sorted, so the output order is stable; a file reached twice is listed once.
    """
    found: dict[Path, None] = {}
    problems = []
    for path in map(Path, paths):
        if path.is_dir():
            in_folder, skipped = [], []
            for folder, _, names in os.walk(path):  # does not follow symlinked folders: no loops
                for name in names:
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        candidate = Path(folder) / name
                        (in_folder if is_regular_file(candidate) else skipped).append(candidate)
            problems += [(p, "not a regular file (a pipe, device or broken link); skipped") for p in sorted(skipped)]
            if not in_folder and not skipped:
                problems.append((path, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"))
            found.update(dict.fromkeys(sorted(in_folder)))
        elif is_regular_file(path):
            found[path] = None
        elif path.exists():
            problems.append((path, "not a regular file (a pipe, device or socket); skipped"))
        else:
            problems.append((path, "no such file or folder"))
    return list(found), problems


def load_image(path: Path, *, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, bool]:
    """(the image at `path` as uint8 RGB (height, width, 3) of `size` (width, height), whether it was resampled);
    see `data.images.to_rgb` and `fit`.

    The EXIF orientation is applied (as viewers show the photo); an animated GIF or multi-page TIFF gives its
    first frame. Raises UnreadableImageError saying why a file cannot be used.
    """
    if not is_regular_file(path):
        raise UnreadableImageError("no such file" if not os.path.lexists(path) else "not a regular file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise UnreadableImageError(
                        f"{image.width}x{image.height} pixels is over the limit of {max_pixels:,} "
                        "(decompression bomb guard)"
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
                resampled = upright.size != size
                pixels = np.asarray(fit(to_rgb(upright), size), dtype=np.uint8)
    except UnreadableImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImageError(f"too large ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise UnreadableImageError("not an image format Pillow can read") from exc
    except FileNotFoundError as exc:
        raise UnreadableImageError("no such file") from exc
    except Exception as exc:  # noqa: BLE001  Pillow's decoders raise many types on damaged files (OSError,
        # SyntaxError, struct.error, IndexError, ...): any of them means this one file cannot be classified.
        raise UnreadableImageError(f"damaged or unsupported image ({type(exc).__name__}: {exc})") from exc
    return pixels, resampled


# ---- models --------------------------------------------------------------------------------------


def input_size(model: keras.Model) -> tuple[int, int]:
    """(width, height) of the images `model` takes; it must take RGB images of a fixed size."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise DataError(f"model {model.name!r} takes inputs of shape {shape}, not RGB images of a fixed size")
    return int(shape[2]), int(shape[1])


def class_names(model: keras.Model) -> tuple[str, ...]:
    """The classes a model's probabilities stand for: one sigmoid or two softmax outputs are real/fake."""
    width = model.output_shape[-1]
    if width in (1, 2):
        return BINARY_CLASSES
    if width == len(SOURCE_KINDS):
        return SOURCE_KINDS
    raise DataError(f"model {model.name!r} has {width} outputs; expected 1 or 2 (real/fake) or 3 ({SOURCE_KINDS})")


def is_mlflow_uri(spec: str) -> bool:
    return bool(_URI.match(spec))


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above `start` that holds dvc.yaml; `start` itself when there is none."""
    start = Path(start).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / "dvc.yaml").is_file()), start)


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


def _info_beside(model_file: Path) -> DetectorInfo | None:
    """The detector extras saved next to a model file, when there are any."""
    extras = info_path(model_file)
    return load_info(extras) if extras.is_file() else None


def _resized_accuracy(robustness_file: Path) -> float | None:
    """Accuracy on images downscaled 2x and back, from a robustness report (metrics/robustness/<name>.json)."""
    try:
        return float(json.loads(robustness_file.read_text())["scores"][RESIZE_PERTURBATION]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def best_binary_model(paths: ProjectPaths) -> tuple[LoadedModel, float]:
    """The binary (real/fake) model with the highest validation accuracy, and that accuracy.

    Candidates are loaded best first until one has one or two outputs, so the 3-class model is passed over.
    """
    from realfake.models.saving import load_model

    for name, accuracy in val_accuracies(paths):
        path = paths.model_file(name)
        model = load_model(path, rebuild_with=f"dvc repro train@{name}")
        if class_names(model) == BINARY_CLASSES:
            resized = _resized_accuracy(paths.metrics / "robustness" / f"{name}.json")
            return LoadedModel(model, name, str(path), _info_beside(path), resized), accuracy
        log.info("%s: %d outputs, not a binary real/fake model; skipped", path, model.output_shape[-1])
    raise DataError(
        f"no trained binary model in {paths.models} with its metrics in {paths.metrics / 'train'}: "
        "run `dvc repro` there, or pass --model"
    )


def has_pipeline_models(paths: ProjectPaths) -> bool:
    return bool(val_accuracies(paths))


# The detector that ships inside the package (trained by the fast-60min recipe; see its MODEL_CARD.md).
SHIPPED = Path(__file__).with_name("detector")
SHIPPED_MODEL = SHIPPED / "fast.keras"
SHIPPED_CARD = SHIPPED / "card.json"


def shipped_model() -> LoadedModel:
    """The detector shipped with the package, with its thresholds, OOD statistics and measured robustness."""
    from realfake.models.saving import load_model

    if not SHIPPED_MODEL.is_file():
        raise DataError(f"{SHIPPED_MODEL}: the shipped detector is missing from this installation; reinstall realfake")
    model = load_model(SHIPPED_MODEL, rebuild_with="pip install --force-reinstall realfake")
    resized = None
    if SHIPPED_CARD.is_file():
        card = json.loads(SHIPPED_CARD.read_text())
        resized = card.get("robustness", {}).get(RESIZE_PERTURBATION)
    return LoadedModel(model, "shipped:fast", str(SHIPPED_MODEL), _info_beside(SHIPPED_MODEL), resized)


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
    extras = info_path(files[0])  # logged beside the model file (a pyfunc's artifacts keep their file names)
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
    """A model from a .keras path or an MLflow artifact URI (then downloaded from the store at `tracking_uri`)."""
    from realfake.models.saving import load_model

    if is_mlflow_uri(spec):
        if tracking_uri is None:
            raise DataError(
                f"{spec}: no MLflow store to read it from here. Pass --repo PATH (a realfake checkout with its "
                "mlflow.db) or set MLFLOW_TRACKING_URI to the store or server"
            )
        with tempfile.TemporaryDirectory(prefix="realfake-model-") as tmp:
            path, extras = download_model_files(spec, tracking_uri=tracking_uri, dst=Path(tmp))
            model = load_model(path, rebuild_with=f"mlflow (re-log {spec})")
            info = load_info(extras) if extras else None
        return LoadedModel(model, spec, spec, info)
    path = Path(spec)
    model = load_model(path, rebuild_with="dvc repro")
    return LoadedModel(model, path.stem, str(path), _info_beside(path))


# ---- classifying ---------------------------------------------------------------------------------


def classify(
    loaded: LoadedModel, paths: Sequence[Path], *, batch_size: int, threshold: float, max_pixels: int
) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """(predictions, [(path, why it was skipped)]), decoding and scoring `batch_size` files at a time.

    The label is fake when P(fake) >= threshold for a binary model; a 3-class model's label is its most probable
    class (threshold unused), while P(fake) is still 1 - P(real). With detector extras, each image also gets its
    out-of-distribution score and flag. A progress bar shows when there are several batches.
    """
    from realfake.evaluation import ood

    size, names = input_size(loaded.model), class_names(loaded.model)
    info = loaded.info
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    with tqdm(total=len(paths), unit="image", file=sys.stderr, disable=len(paths) <= batch_size) as bar:
        for start in range(0, len(paths), batch_size):
            batch, pixels, resampled = [], [], []
            for path in paths[start : start + batch_size]:
                try:
                    image, changed = load_image(path, size=size, max_pixels=max_pixels)
                except UnreadableImageError as exc:
                    skipped.append((path, str(exc)))
                    continue
                batch.append(path)
                pixels.append(image)
                resampled.append(changed)
            if pixels:
                images = np.stack(pixels)
                probabilities = predict_proba(loaded.model, images, batch_size=batch_size)
                labels = predict_labels(probabilities, threshold=threshold)
                if info is not None:
                    features = ood.embed(loaded.model, images, batch_size=batch_size)
                    distances = ood.scores(features, info.ood_means, info.ood_precision)
                else:
                    distances = [None] * len(batch)
                predictions += [
                    Prediction(
                        display_path(path),
                        float(p),
                        names[label],
                        loaded.name,
                        bool(changed),
                        None if d is None else bool(d > info.ood_cutoff),
                        None if d is None else float(d),
                    )  # fmt: skip
                    for path, p, label, changed, d in zip(
                        batch, p_fake(probabilities), labels, resampled, distances, strict=True
                    )
                ]
            bar.update(len(paths[start : start + batch_size]))
    return predictions, skipped


# ---- output --------------------------------------------------------------------------------------

COLUMNS = ("path", "p_fake", "label", "model", "resampled", "ood", "ood_score")


def printable(text: str) -> str:
    """`text` with control characters (a newline in a file name) written as escapes, so a row stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _flag(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def format_table(predictions: Sequence[Prediction]) -> str:
    """Aligned columns path, P(fake) (4 decimals), label, model, resampled, out of distribution; one line per image."""
    rows = [("path", "P(fake)", "label", "model", "resampled", "out of distribution")]
    rows += [
        (
            printable(p.path),
            f"{p.p_fake:.4f}",
            p.label,
            p.model,
            _flag(p.resampled),
            {None: "", True: "yes: verdict unreliable", False: "no"}[p.ood],
        )  # fmt: skip
        for p in predictions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(
            cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_json(predictions: Sequence[Prediction]) -> str:
    """A JSON list of {path, p_fake, label, model, resampled, ood, ood_score} objects (full precision)."""
    return json.dumps([dataclasses.asdict(p) for p in predictions], indent=2) + "\n"


def format_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with a header row path,p_fake,label,model,resampled,ood,ood_score (full precision)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(
        (
            p.path,
            repr(p.p_fake),
            p.label,
            p.model,
            p.resampled,
            "" if p.ood is None else p.ood,
            "" if p.ood_score is None else repr(p.ood_score),
        )  # fmt: skip
        for p in predictions
    )
    return out.getvalue()


FORMATTERS = {"table": format_table, "json": format_json, "csv": format_csv}
