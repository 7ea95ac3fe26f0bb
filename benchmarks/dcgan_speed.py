"""DCGAN training throughput (images/s) of the reference study's architecture, one variant per row, in one process.

Variants: float32 and mixed_bfloat16 compute through `fit()` on the stage's own input pipeline (`Batches`), then
mixed_bfloat16 with several train steps per `fit` call (`steps_per_execution`, less Python between steps), and
mixed_bfloat16 on one fixed in-memory batch (no input pipeline: what the pipeline costs). Each row times `--steps`
steps after one untimed epoch of the same length (tracing); synthetic uint8 images, since speed does not depend on
the pixels. Run: `python benchmarks/dcgan_speed.py [--batch-size 128] [--steps 30]`.
"""

import argparse
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from realfake.models.dcgan import build_dcgan
from realfake.training.inputs import Batches

log = logging.getLogger("dcgan_speed")
STUDY = dict(noise_dim=100, dense_filters=256, g_filters=(128, 64), d_filters=(64, 128), kernel_size=5, dropout=0.3)


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.t0  # the last epoch's


def measure(precision: str, *, batch_size: int, steps: int, steps_per_execution: int = 1, pipeline: bool = True):
    keras.utils.set_random_seed(0)
    gan = build_dcgan(**STUDY, learning_rate=2e-4, beta_1=0.5, precision=precision, seed=0)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    images = np.random.default_rng(0).integers(0, 256, (batch_size * steps, 32, 32, 3), dtype=np.uint8)
    if pipeline:
        batches = Batches(images, np.zeros(len(images), np.int32), batch_size=batch_size, seed=0, shuffle=True)
        stream = batches.epochs(0, 2)
    else:
        stream = tf.data.Dataset.from_tensors(tf.constant(images[:batch_size], tf.float32)).repeat()
    timer = EpochTimer()
    gan.fit(stream, epochs=2, steps_per_epoch=steps, callbacks=[timer], shuffle=False, verbose=0)
    return batch_size * steps / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = {
        "float32, fit on Batches": dict(precision="float32"),
        "mixed_bfloat16, fit on Batches": dict(precision="mixed_bfloat16"),
        "mixed_bfloat16, steps_per_execution=10": dict(precision="mixed_bfloat16", steps_per_execution=10),
        "mixed_bfloat16, one fixed batch (no input pipeline)": dict(precision="mixed_bfloat16", pipeline=False),
    }
    rows = {}
    for name, kwargs in variants.items():
        rows[name] = measure(batch_size=args.batch_size, steps=args.steps, **kwargs)
        log.info("%-55s %7.0f images/s", name, rows[name])
    print(
        json.dumps({"batch_size": args.batch_size, "steps": args.steps, "cpus": os.cpu_count(), "images_per_s": rows})
    )


if __name__ == "__main__":
    main()
