"""Scoring a model: class probabilities in batches, P(fake), decisions, and the one helper that scores a model on
a labelled split (used by evaluate, robustness, the test curve and the benchmarks).

Labels: 0 = real; binary 1 = fake; 3-class 1 = sd_fake, 2 = dcgan_fake. Column 0 of every model's probabilities is
P(real), so 1 - column 0 is P(fake) for the sigmoid models and the softmax models alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from realfake.evaluation.metrics import binary_predictions, binary_report
from realfake.progress import batch_starts

if TYPE_CHECKING:  # importing keras pulls in TensorFlow; the functions below take a model, they do not build one
    import keras

log = logging.getLogger(__name__)


def predict_proba(model: keras.Model, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images (N, H, W, 3), fed to the model one float32 batch at a time.

    A single-output sigmoid model (P(fake)) gives (N, 2) columns [1 - p, p], so every model yields class
    probabilities with P(real) in column 0.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, height, width, 3), got {images.shape}")
    if images.dtype != np.uint8:
        # Every model rescales inside itself, so inputs already scaled to [0, 1] or [-1, 1] would be scored
        # silently wrong (the original notebooks' cross-evaluation mistake).
        raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Keras traces a graph for predict_on_batch: seconds for the transfer models (EfficientNetV2B3 ~6 s on 2
    # cores), repaid only over several batches (it then runs ~3.5x faster than eager calls); one batch runs eagerly.
    one_batch = len(images) <= batch_size
    outputs = []
    for start in batch_starts(len(images), batch_size, desc=f"scoring with {model.name}"):
        # Cast per batch: a float32 copy of a whole test set is four times its uint8 size.
        batch = images[start : start + batch_size].astype(np.float32)
        scores = model(batch, training=False) if one_batch else model.predict_on_batch(batch)
        outputs.append(np.asarray(scores, dtype=np.float64))
    if outputs:
        probabilities = np.concatenate(outputs).reshape(len(images), -1)
    else:
        probabilities = np.zeros((0, model.output_shape[-1]))
    if probabilities.shape[1] == 1:
        p = probabilities[:, 0]
        probabilities = np.stack([1.0 - p, p], axis=1)
    log.info("scored %d images with %s: %d class columns", len(images), model.name, probabilities.shape[1])
    return probabilities


def p_fake(probabilities: np.ndarray) -> np.ndarray:
    """P(fake) per image: 1 - P(real), i.e. P(any fake kind) for a 3-class model."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {probabilities.shape}")
    return 1.0 - probabilities[:, 0]


def predict_labels(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """Predicted labels: thresholded P(fake) for 2-class probabilities, the argmax for more classes.

    `threshold` only applies to 2 classes; a 3-class model's decision is its most probable class.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        return binary_predictions(p_fake(probabilities), threshold=threshold)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {probabilities.shape}")
    return np.argmax(probabilities, axis=1).astype(np.int64)


def score_binary(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    batch_size: int,
    threshold: float,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> tuple[np.ndarray, dict]:
    """(P(fake) per image, `metrics.binary_report`) of a binary model on labelled uint8 images."""
    scores = p_fake(predict_proba(model, images, batch_size=batch_size))
    report = binary_report(
        labels, scores, threshold=threshold, class_names=class_names, n_bootstrap=n_bootstrap,
        confidence=confidence, seed=seed,
    )  # fmt: skip
    return scores, report


def score_curve_point(model: keras.Model, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """{test_accuracy (argmax / P(fake) >= 0.5), test_roc_auc (two classes)} for one point of a test curve."""
    from sklearn.metrics import roc_auc_score

    probabilities = predict_proba(model, images, batch_size=batch_size)
    labels = np.asarray(labels)
    point = {"test_accuracy": float(np.mean(predict_labels(probabilities, threshold=0.5) == labels))}
    if probabilities.shape[1] == 2 and 0 < labels.sum() < len(labels):
        point["test_roc_auc"] = float(roc_auc_score(labels, p_fake(probabilities)))
    return point
