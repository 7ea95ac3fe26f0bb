"""One seed for Python, NumPy and the Keras backend."""

from __future__ import annotations

import random

import keras
import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend (TensorFlow's global seed, which tf.data combines) from one integer.

    Op determinism (`tf.config.experimental.enable_op_determinism`) stays off: on CPUs the runs are bit-identical
    without it (see docs/decisions.md), and on GPUs it swaps in slower kernels.
    """
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
