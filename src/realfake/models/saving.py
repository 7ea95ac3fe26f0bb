"""Saving and loading trained models: inference artifacts loaded in Keras' safe mode."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras

from realfake.errors import DataError
from realfake.fileio import atomic_path
from realfake.models import layers  # noqa: F401  (registers the custom layers saved models refer to)


def save_model(model: keras.Model, path: Path) -> None:
    """Write `model` to `path` (.keras, atomically) as an inference artifact: architecture and weights, without
    the optimizer's state or compile settings. Adam-family slots would triple the file (EfficientNetV2B3: 161 MB
    instead of 55) for nothing: consumers load it uncompiled, and an interrupted fit resumes from its own state
    folder, not from this file.
    """
    optimizer, compiled = getattr(model, "optimizer", None), model.compiled
    model.optimizer, model.compiled = None, False  # Keras 3 has no include_optimizer=False
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    finally:
        model.optimizer, model.compiled = optimizer, compiled


def load_model(path: Path, *, rebuild_with: str) -> keras.Model:
    """Load a saved `.keras` model in Keras' safe mode, with realfake's custom layers registered.

    Anything that is not a readable `.keras` file (missing, a folder or device, a zip without `config.json`, text)
    raises DataError naming the file and the command that rebuilds it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model file not found; build it with `{rebuild_with}`")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; a model is a .keras file (build one with `{rebuild_with}`)")
    try:
        with zipfile.ZipFile(path) as archive:
            complete = {"config.json", "model.weights.h5"} <= set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        complete = False
    if not complete:
        raise DataError(
            f"{path}: not a Keras model file (a .keras file is a zip holding config.json and model.weights.h5); "
            f"pass a model saved by realfake, or rebuild it with `{rebuild_with}`"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001  Keras raises ValueError, TypeError, KeyError, OSError... for bad files
        raise DataError(
            f"{path}: not a loadable Keras model ({type(exc).__name__}: {exc}); rebuild it with `{rebuild_with}`"
        ) from exc
