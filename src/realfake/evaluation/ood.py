"""Out-of-distribution scores: how far an image's features lie from the training images', as the smallest
Mahalanobis distance to a class mean of the features a classifier's last layer reads (Lee et al. 2018), with a
covariance shrunk towards a scaled identity (Ledoit-Wolf) so that it inverts with few images.

Fitted on the training split; the cutoff is a percentile of the validation split's scores. `photo_crops` makes the
out-of-distribution set the score is measured against: crops of real photographs at other sizes, resized to the
model's input the way `realfake predict` resizes any photo.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from realfake.data.images import fit
from realfake.progress import batch_starts

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class OodStatistics:
    means: np.ndarray  # (classes, features) float32
    precision: np.ndarray  # (features, features) float32, the inverse of the shared covariance
    cutoff: float  # scores above it are out of distribution
    percentile: float  # of the validation scores, that `cutoff` is


def feature_layer(model: keras.Model):
    """The last Dense layer: the features are its input (after global pooling and dropout, at inference)."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"model {model.name!r} has no Dense layer to read features from")
    return dense[-1]


def embed(model: keras.Model, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """(N, features) float64: the input of the model's last Dense layer, averaged over test-time views if any."""
    import keras

    from realfake.models.layers import TTAViews

    extractor = keras.Model(model.inputs[0], feature_layer(model).input)
    views = next((layer.views for layer in model.layers if isinstance(layer, TTAViews)), 1)
    out = []
    for start in batch_starts(len(images), batch_size, desc=f"features of {model.name}"):
        batch = images[start : start + batch_size]
        features = np.asarray(extractor(batch.astype(np.float32), training=False), dtype=np.float64)
        out.append(features.reshape(views, len(batch), -1).mean(axis=0))
    return np.concatenate(out)


def fit_statistics(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class means, shared precision) of training features."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = LedoitWolf().fit(centred).covariance_
    return means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32)


def scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, per image (higher = further from training)."""
    precision = precision.astype(np.float64)
    distances = []
    for mean in means.astype(np.float64):
        centred = features - mean
        distances.append(np.einsum("ij,jk,ik->i", centred, precision, centred))
    return np.min(distances, axis=0)


def sample_photos() -> list[np.ndarray]:
    """The real photographs that ship with matplotlib and scikit-learn, as uint8 RGB arrays."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)) as image:
            photos.append(np.asarray(image.convert("RGB")))
    return photos


def photo_crops(photos: list[np.ndarray], *, count: int, size: int, seed: int) -> np.ndarray:
    """`count` seeded square crops, 2 to 12 times the model's side, resized to size x size as predict resizes."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        side = int(rng.integers(2 * size, min(12 * size, height, width) + 1))
        top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        out[i] = np.asarray(fit(crop, (size, size)), dtype=np.uint8)
    return out
