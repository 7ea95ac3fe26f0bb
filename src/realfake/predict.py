"""Classify image files with a trained model: find, decode and resize images, pick or fetch a model, score them.

Every image is turned into exactly what the models were trained on: 32x32 (the model's input size) RGB uint8
pixels, fed as float32. Images that already have the model's size are NOT resampled, so a CIFAKE JPEG gives the
very pixels `prepare` decoded from it. Files that cannot be read are reported, never guessed at.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from realfake.errors import DataError, RealfakeError
from realfake.evaluation import SOURCE_KINDS, p_fake, predict_labels, predict_proba
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

# Transparent pixels are composited onto white, the background nearly every viewer shows them on; the colour
# values hidden under alpha 0 are arbitrary (often black) and would otherwise leak into the prediction.
BACKGROUND = (255, 255, 255)

BINARY_CLASSES = ("real", "fake")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# scheme:/... with a scheme of two or more letters (models:/, runs:/, s3://, mlflow-artifacts://); a single letter
# followed by ":/" is a Windows drive, i.e. a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class UnreadableImageError(RealfakeError):
    """One file cannot be classified (not an image, damaged, too large); the others still can."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    p_fake: float
    label: str
    model: str


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: keras.Model
    name: str  # what the output's model column shows
    source: str  # where it was loaded from (a file or an MLflow URI)


# ---- finding and decoding images -----------------------------------------------------------------


def find_images(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(path, problem)]): files as given, folders searched recursively for IMAGE_EXTENSIONS.

    Folder contents are sorted, so the output order is stable; a file reached twice is listed once.
    """
    found: dict[Path, None] = {}
    problems = []
    for path in map(Path, paths):
        if path.is_dir():
            in_folder = [
                Path(folder) / name
                for folder, _, names in os.walk(path)  # does not follow symlinked folders: no loops
                for name in names
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS
            ]
            if not in_folder:
                problems.append((path, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"))
            found.update(dict.fromkeys(sorted(in_folder)))
        elif path.is_file():
            found[path] = None
        else:
            problems.append((path, "no such file or folder"))
    return list(found), problems


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: grayscale and palette images are expanded, transparency is composited onto BACKGROUND.

    16-bit grayscale keeps its 8 most significant bits (Pillow's convert() would clip it at 255, i.e. white).
    """
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (width, height): the largest centred crop of the target's shape, resized with LANCZOS.

    An image already of `size` is returned untouched (no resampling at all). Cropping rather than squashing keeps
    textures undistorted, and a detector of generated images looks at texture. LANCZOS: Pillow antialiases every
    filter but NEAREST by widening it with the reduction factor, and of those LANCZOS has the sharpest cut-off, so
    it keeps the fine detail just below the new resolution (where generator artefacts live) that BOX's area
    average and BILINEAR blur, with less aliasing than BOX lets through; it also serves for enlarging small
    images. No reducing_gap and no JPEG draft mode: both trade exactness for speed.
    """
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def load_image(path: Path, *, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """The image at `path` as uint8 RGB (height, width, 3) of `size` (width, height); see to_rgb and fit.

    The EXIF orientation is applied (as viewers show the photo); an animated GIF or multi-page TIFF gives its
    first frame. Raises UnreadableImageError saying why a file cannot be used.
    """
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
                pixels = np.asarray(fit(to_rgb(ImageOps.exif_transpose(image)), size), dtype=np.uint8)
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
    return pixels


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


def best_binary_model(paths: ProjectPaths) -> tuple[LoadedModel, float]:
    """The binary (real/fake) model with the highest validation accuracy, and that accuracy.

    Candidates are loaded best first until one has one or two outputs, so the 3-class model is passed over.
    """
    from realfake.classifiers import load_model

    for name, accuracy in val_accuracies(paths):
        path = paths.model_file(name)
        model = load_model(path, rebuild_with=f"dvc repro train@{name}")
        if class_names(model) == BINARY_CLASSES:
            return LoadedModel(model, name, str(path)), accuracy
        log.info("%s: %d outputs, not a binary real/fake model; skipped", path, model.output_shape[-1])
    raise DataError(
        f"no trained binary model in {paths.models} with its metrics in {paths.metrics / 'train'}: "
        "run `dvc repro` there, or pass --model"
    )


def download_model_file(uri: str, *, tracking_uri: str, dst: Path) -> Path:
    """Download an MLflow artifact URI (models:/..., runs:/...) into `dst`: the one .keras file it holds."""
    import mlflow

    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri)
        )
    except Exception as exc:  # noqa: BLE001  the store, the registry and the transport each raise their own types
        raise DataError(f"{uri}: could not download it from the MLflow store {tracking_uri} ({exc})") from exc
    files = ([local] if local.suffix == ".keras" else []) if local.is_file() else sorted(local.rglob("*.keras"))
    if not files:
        raise DataError(f"{uri}: the downloaded artifact holds no .keras file")
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(local)) for f in files)
        raise DataError(f"{uri}: holds several .keras files ({names}); add the one you want to the URI")
    return files[0]


def load_named_model(spec: str, *, tracking_uri: str) -> LoadedModel:
    """A model from a .keras path or an MLflow artifact URI (then downloaded from the store at `tracking_uri`)."""
    from realfake.classifiers import load_model

    if is_mlflow_uri(spec):
        with tempfile.TemporaryDirectory(prefix="realfake-model-") as tmp:
            path = download_model_file(spec, tracking_uri=tracking_uri, dst=Path(tmp))
            model = load_model(path, rebuild_with=f"mlflow (re-log {spec})")
        return LoadedModel(model, spec, spec)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{path}: no such model file (pass a .keras file or an MLflow URI such as models:/name/1)")
    return LoadedModel(load_model(path, rebuild_with="dvc repro"), path.stem, str(path))


# ---- classifying ---------------------------------------------------------------------------------


def classify(
    loaded: LoadedModel, paths: Sequence[Path], *, batch_size: int, threshold: float, max_pixels: int
) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """(predictions, [(path, why it was skipped)]), decoding and scoring `batch_size` files at a time.

    The label is fake when P(fake) >= threshold for a binary model; a 3-class model's label is its most probable
    class (threshold unused), while P(fake) is still 1 - P(real). A progress bar shows when there are several
    batches.
    """
    size, names = input_size(loaded.model), class_names(loaded.model)
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    with tqdm(total=len(paths), unit="image", file=sys.stderr, disable=len(paths) <= batch_size) as bar:
        for start in range(0, len(paths), batch_size):
            batch, pixels = [], []
            for path in paths[start : start + batch_size]:
                try:
                    pixels.append(load_image(path, size=size, max_pixels=max_pixels))
                    batch.append(path)
                except UnreadableImageError as exc:
                    skipped.append((path, str(exc)))
            if pixels:
                probabilities = predict_proba(loaded.model, np.stack(pixels), batch_size=batch_size)
                labels = predict_labels(probabilities, threshold=threshold)
                predictions += [
                    Prediction(str(path), float(p), names[label], loaded.name)
                    for path, p, label in zip(batch, p_fake(probabilities), labels, strict=True)
                ]
            bar.update(len(paths[start : start + batch_size]))
    return predictions, skipped


# ---- output --------------------------------------------------------------------------------------

COLUMNS = ("path", "p_fake", "label", "model")


def format_table(predictions: Sequence[Prediction]) -> str:
    """Aligned columns path, P(fake) (4 decimals), label, model; one line per image."""
    rows = [("path", "P(fake)", "label", "model")]
    rows += [(p.path, f"{p.p_fake:.4f}", p.label, p.model) for p in predictions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(
            cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_json(predictions: Sequence[Prediction]) -> str:
    """A JSON list of {path, p_fake, label, model} objects (P(fake) at full precision)."""
    return json.dumps([dataclasses.asdict(p) for p in predictions], indent=2) + "\n"


def format_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with a header row path,p_fake,label,model (P(fake) at full precision)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((p.path, repr(p.p_fake), p.label, p.model) for p in predictions)
    return out.getvalue()


FORMATTERS = {"table": format_table, "json": format_json, "csv": format_csv}
