"""The small baseline CNN from the original study: two conv blocks and a dense head, P(fake) out."""

from collections.abc import Sequence

import keras
from keras import layers


def build_cnn(
    *,
    input_shape: tuple[int, int, int],
    conv_filters: Sequence[int],
    kernel_size: int,
    pool_size: int,
    dense_units: int,
) -> keras.Model:
    """Build the CNN: Rescaling(1/255), [Conv2D relu + MaxPooling2D] per filter count, Dense relu, Dense sigmoid.

    Takes uint8-valued pixels 0..255; the single sigmoid output is P(fake) (label 1 = fake).
    """
    conv_blocks = []
    for filters in conv_filters:
        conv_blocks += [
            layers.Conv2D(filters, kernel_size, activation="relu"),
            layers.MaxPooling2D(pool_size),
        ]
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            *conv_blocks,
            layers.Flatten(),
            layers.Dense(dense_units, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="cnn",
    )
