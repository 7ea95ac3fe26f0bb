"""Benchmark: training images/s of the transfer backbones from scratch, per batch size, on this CPU.

    .venv/bin/python benchmarks/transfer_speed.py MODEL BATCH [JIT]     # MODEL: efficientnet | resnet50; JIT: 0 | 1

Builds the model as `models/transfer.py` does (32x32 input, random weights, the reference study's head), compiles it
with Adam, fits 2 batches of random uint8-valued images to trace, then times one `fit` epoch of 8 batches. Prints one
line: model, batch, jit, images/s. Run each setting in its own process so no compiled function carries over.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from realfake.models.transfer import build_efficientnet, build_resnet50  # noqa: E402


def build(model: str) -> keras.Model:
    if model == "resnet50":
        return build_resnet50(input_shape=(32, 32, 3), num_classes=2, weights=None, dense_units=256, dropout=0.6,
                              seed=0, params_key="models.resnet50.weights")  # fmt: skip
    return build_efficientnet(input_shape=(32, 32, 3), num_classes=2, weights=None, dense_units=256, kernel_l2=0.0095,
                              activity_l1=0.005, bias_l1=0.005, dropout=0.4, seed=0,
                              params_key="models.efficientnet.weights")  # fmt: skip


def main(model: str, batch: int, jit: bool) -> None:
    net = build(model)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 2, batch * 8)
    net.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    net.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    print(model, batch, jit, f"{len(x) / (time.perf_counter() - start):.1f} images/s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "1")
