"""Classify image files with a trained model, in library form: `realfake predict` is this plus its options.

The work is split by job: `images` finds and decodes files, `models` chooses and loads the model, `engines` run it
(ONNX Runtime without TensorFlow, or Keras), `classify` turns scores into verdicts a batch at a time, and `output`
writes them as a table, JSON or CSV. This module gathers their public names.
"""

from __future__ import annotations

from realfake.serving.classify import Prediction, classify, labels_at, score_pixels
from realfake.serving.engines import BINARY_CLASSES, THREE_CLASSES, KerasEngine, OnnxEngine, extras_beside
from realfake.serving.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    UnreadableImageError,
    decode_bytes,
    display_path,
    find_images,
    is_regular_file,
    load_image,
)
from realfake.serving.models import (
    FALLBACK_THRESHOLD,
    RESIZE_PERTURBATION,
    SHIPPED,
    LoadedModel,
    best_binary_model,
    download_model_files,
    find_repo_root,
    has_pipeline_models,
    is_mlflow_uri,
    load_named_model,
    shipped_model,
    val_accuracies,
)
from realfake.serving.output import (
    COLUMNS,
    FORMATTERS,
    WRITERS,
    escape_control,
    format_csv,
    format_json,
    format_table,
    printable,
)

SOURCE_KINDS = THREE_CLASSES

__all__ = [
    "BINARY_CLASSES", "COLUMNS", "FALLBACK_THRESHOLD", "FORMATTERS", "IMAGE_EXTENSIONS", "MAX_PIXELS",
    "RESIZE_PERTURBATION", "SHIPPED", "SOURCE_KINDS", "THREE_CLASSES", "WRITERS", "KerasEngine",
    "LoadedModel", "OnnxEngine", "Prediction", "UnreadableImageError", "best_binary_model", "classify",
    "decode_bytes", "display_path", "download_model_files", "escape_control", "extras_beside",
    "find_images", "find_repo_root", "format_csv", "format_json", "format_table", "printable", "has_pipeline_models",
    "input_size", "is_mlflow_uri", "is_regular_file",
    "labels_at", "load_image", "load_named_model", "score_pixels", "shipped_model", "val_accuracies",
]  # fmt: skip


def input_size(model) -> tuple[int, int]:
    """(width, height) of the images a Keras `model` takes; it must take RGB images of a fixed size."""
    return KerasEngine(model).size


def class_names(model) -> tuple[str, ...]:
    """The classes a Keras model's probabilities stand for: one sigmoid or two softmax outputs are real/fake."""
    return KerasEngine(model).class_names
