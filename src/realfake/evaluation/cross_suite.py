"""The cross-evaluation suite: the test sources (CIFAKE real, Stable Diffusion fakes, DCGAN fakes) read and checked
from their files, every saved classifier found and checked, and all of them scored on every source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from realfake.data.threeclass import THREE_CLASSES
from realfake.errors import DataError, ParamsError, RealfakeError
from realfake.evaluation import cross
from realfake.fileio import load_arrays
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.paths import ProjectPaths


def read_images(path: Path, rel: str, producer: str) -> dict:
    """The arrays of one test file, its `images` checked to be uint8 (N, height, width, 3)."""
    if not path.exists():
        raise RealfakeError(f"{rel}: not found; create it with: dvc repro {producer}")
    arrays = load_arrays(path)
    images = arrays.get("images")
    if images is None or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{rel}: expected `images` as uint8 (N, height, width, 3)")
    return arrays


def source_files(paths: ProjectPaths) -> tuple[Path, Path]:
    """The CIFAKE test split and the DCGAN test fakes, in that order."""
    return paths.prepared_split("test"), paths.generated_split("test")


def load_sources(paths: ProjectPaths) -> dict[str, tuple[str, np.ndarray]]:
    """source name -> (true kind, uint8 images); each source holds one kind and is named after it."""
    cifake_path, dcgan_path = source_files(paths)
    cifake_rel, dcgan_rel = str(cifake_path.relative_to(paths.root)), str(dcgan_path.relative_to(paths.root))
    cifake = read_images(cifake_path, cifake_rel, "prepare")
    dcgan = read_images(dcgan_path, dcgan_rel, "generate")
    if [str(name) for name in cifake.get("class_names", [])] != ["real", "fake"] or "labels" not in cifake:
        raise DataError(f"{cifake_rel}: expected `labels` with class_names [real, fake]")
    sources = {
        "real": (cifake["images"][cifake["labels"] == 0], cifake_rel),
        "sd_fake": (cifake["images"][cifake["labels"] == 1], cifake_rel),
        "dcgan_fake": (dcgan["images"], dcgan_rel),
    }
    for name, (images, rel) in sources.items():
        if len(images) == 0:
            raise DataError(f"{rel}: holds no images for test source {name!r}")
    return {name: (name, images) for name, (images, _) in sources.items()}


def rebuild_command(name: str, three: Sequence[str]) -> str:
    return f"dvc repro train_3class@{name}" if name in three else f"dvc repro train@{name}"


def model_files(paths: ProjectPaths, models: Sequence[str], three: Sequence[str]) -> dict[str, Path]:
    """Each classifier's saved model, checked to exist; the 3-class ones (`three`, all among `models`) last."""
    for name in three:
        if name not in models:
            raise ParamsError(f"train_3class.models: {name!r} is not a models.<name> section ({', '.join(models)})")
    names = [name for name in models if name not in three] + list(three)
    files = {name: paths.model_file(name) for name in names}
    for name, path in files.items():
        if not path.exists():
            raise RealfakeError(f"{path.relative_to(paths.root)}: model not found; train it with: "
                                f"{rebuild_command(name, three)}")  # fmt: skip
    return files


def load_checked_model(path: Path, rel: str, *, n_classes: int, rebuild_with: str):
    """A saved classifier, checked to output P(fake) (binary: 1 or 2 columns) or 3 class probabilities."""
    model = load_model(path, rebuild_with=rebuild_with)
    width = model.output_shape[-1]
    if width not in ((1, 2) if n_classes == 2 else (n_classes,)):
        kind = "binary (1 or 2 outputs)" if n_classes == 2 else f"{n_classes}-class"
        raise DataError(f"{rel}: has {width} outputs but should be {kind}; is train_3class.models right?")
    return model


def score_all(
    files: Mapping[str, Path],
    sources: Mapping[str, tuple[str, np.ndarray]],
    *,
    three: Sequence[str],
    root: Path,
    batch_size: int,
    threshold: float,
    confidence: float,
) -> tuple[dict, dict]:
    """({model: {source: score}}, {binary model: {source: warning shares}}), loading one model at a time."""
    scores, warnings = {}, {}
    for name, path in files.items():
        class_names = THREE_CLASSES if name in three else ("real", "fake")
        model = load_checked_model(path, str(path.relative_to(root)), n_classes=len(class_names),
                                   rebuild_with=rebuild_command(name, three))  # fmt: skip
        scores[name] = cross.cross_evaluate_model(
            model, sources, class_names=class_names, batch_size=batch_size, threshold=threshold,
            confidence=confidence,
        )  # fmt: skip
        if name not in three:
            warnings[name] = cross.warnings_by_source(
                model, load_info(info_path(path)), sources, batch_size=batch_size, threshold=threshold
            )
    return scores, warnings


def confusions(scores: Mapping[str, dict], three: Sequence[str]) -> dict[str, dict]:
    """Each 3-class model's confusion over the source kinds: rows actual, columns predicted."""
    return {
        name: {
            "labels": list(THREE_CLASSES),
            "matrix": cross.confusion_by_kind(scores[name], class_names=THREE_CLASSES),
        }
        for name in three
    }
