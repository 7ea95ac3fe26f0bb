"""Transfer-learning classifiers: EfficientNetV2B3 and ResNet50 backbones with the study's dense heads."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, regularizers

from realfake.errors import ParamsError, WeightsUnavailableError
from realfake.models.layers import ResNetPreprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsFile:
    """A pre-trained weights file as Keras' applications name, fetch and verify it."""

    name: str
    origin: str
    md5: str


# Copied from keras.applications (Keras 3.15) so we can fetch the file ourselves and name it in errors.
EFFICIENTNETV2B3_NOTOP = WeightsFile(
    name="efficientnetv2-b3_notop.h5",
    origin="https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-b3_notop.h5",
    md5="f6abf7b5849ac99a89b50dd3fd532856",
)
RESNET50_NOTOP = WeightsFile(
    name="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    origin="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    md5="4d473c1dd8becc155b73f8504c6f6626",
)


def keras_models_dir() -> Path:
    """The Keras cache folder for application weights: $KERAS_HOME/models, default ~/.keras/models."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "models"


def fetch_weights(weights_file: WeightsFile, *, params_key: str) -> str:
    """Return the local path of `weights_file`, downloading it into the Keras cache if it is not there.

    Raises WeightsUnavailableError (naming the file, the cache folder and the override that trains from
    scratch) when the file is neither cached nor downloadable.
    """
    cache_dir = keras_models_dir()
    try:
        # get_file checks the cache first and verifies the md5, so a file placed there by hand is used.
        return keras.utils.get_file(
            weights_file.name,
            weights_file.origin,
            cache_dir=str(cache_dir.parent),
            cache_subdir=cache_dir.name,
            file_hash=weights_file.md5,
        )
    except Exception as exc:  # Keras raises a bare Exception for network failures.
        raise WeightsUnavailableError(
            f"Could not get the ImageNet weights file {weights_file.name} ({exc}). "
            f"Download it from {weights_file.origin} and place it in {cache_dir} "
            "(the Keras cache: $KERAS_HOME/models, default ~/.keras/models), "
            f"or train from scratch with `dvc exp run -S {params_key}=null`."
        ) from exc


def _resolve_weights(weights: str | None, weights_file: WeightsFile, *, params_key: str) -> str | None:
    """Map the `weights` parameter ("imagenet" or None) to what keras.applications accepts."""
    if weights is None:
        return None
    if weights != "imagenet":
        raise ParamsError(f"{params_key} must be 'imagenet' or null, got {weights!r}.")
    return fetch_weights(weights_file, params_key=params_key)


def build_efficientnet(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None,
    dense_units: int,
    kernel_l2: float,
    activity_l1: float,
    bias_l1: float,
    dropout: float,
    seed: int,
    params_key: str,
) -> keras.Model:
    """EfficientNetV2B3 (whole base trainable, max pooling) + BN, regularized Dense relu, Dropout, softmax.

    Takes uint8-valued pixels 0..255: the backbone rescales them itself (include_preprocessing=True).
    `params_key` is the params.yaml key of `weights`, named in the error when weights are unavailable.
    """
    base = keras.applications.EfficientNetV2B3(
        include_top=False,
        weights=_resolve_weights(weights, EFFICIENTNETV2B3_NOTOP, params_key=params_key),
        input_shape=input_shape,
        pooling="max",
        include_preprocessing=True,
    )
    base.trainable = True
    inputs = keras.Input(shape=input_shape)
    x = base(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(
        dense_units,
        activation="relu",
        kernel_regularizer=regularizers.L2(kernel_l2),
        activity_regularizer=regularizers.L1(activity_l1),
        bias_regularizer=regularizers.L1(bias_l1),
    )(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="efficientnet")


def build_resnet50(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None,
    dense_units: int,
    dropout: float,
    seed: int,
    params_key: str,
    batchnorm_momentum: float = 0.99,
) -> keras.Model:
    """ResNet50 (trainable, max pooling) behind its own "caffe" preprocessing + Dense relu, Dropout, softmax.

    Takes uint8-valued RGB pixels 0..255. `params_key` is the params.yaml key of `weights`. `batchnorm_momentum`
    replaces the backbone's BatchNorm momentum: from scratch, a few hundred steps leave Keras' 0.99 averages far from
    the weights' current statistics, and inference then calls every image one class.
    """
    base = keras.applications.ResNet50(
        include_top=False,
        weights=_resolve_weights(weights, RESNET50_NOTOP, params_key=params_key),
        input_shape=input_shape,
        pooling="max",
    )
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = batchnorm_momentum
    inputs = keras.Input(shape=input_shape)
    x = ResNetPreprocess()(inputs)
    x = base(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet50")
