"""The MLflow model-registry face of a trained classifier: a pyfunc that takes uint8 images and returns class
probabilities, so `mlflow models serve` and `mlflow.pyfunc.load_model` answer in realfake's terms.

The logged model holds the `.keras` file itself (so `realfake predict --model models:/realfake-<name>/N` reads it
as it reads a local file) and realfake's code (the custom layers the file refers to); its signature says what it
takes and gives. Logging it is the stage scripts' business (`tracking.log_registered_model`).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

KERAS_ARTIFACT = "keras_model"  # key of the .keras file among the logged model's artifacts
INPUT_NAME = "images"


def probability_columns(class_names: tuple[str, ...]) -> list[str]:
    """Output column per class: p_real, p_fake (binary models) or p_real, p_sd_fake, p_dcgan_fake."""
    return [f"p_{name}" for name in class_names]


def signature(image_shape: tuple[int, int, int], class_names: tuple[str, ...]) -> ModelSignature:
    """uint8 images (-1, height, width, 3) in; one probability column per class out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape), name=INPUT_NAME)]),
        outputs=Schema([ColSpec("double", column) for column in probability_columns(class_names)]),
    )


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Loads the logged `.keras` file in Keras' safe mode and scores batches of uint8 RGB images."""

    def __init__(self, class_names: tuple[str, ...], batch_size: int):
        self.class_names, self.batch_size = tuple(class_names), batch_size
        self.model = None

    def load_context(self, context) -> None:
        from realfake.models.saving import load_model

        self.model = load_model(Path(context.artifacts[KERAS_ARTIFACT]), rebuild_with="re-run the train stage")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from realfake.evaluation.scoring import predict_proba

        images = model_input[INPUT_NAME] if isinstance(model_input, dict) else model_input
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, height, width, 3), got {images.dtype} {images.shape}")
        probabilities = predict_proba(self.model, images, batch_size=self.batch_size)
        return pd.DataFrame(probabilities, columns=probability_columns(self.class_names))
