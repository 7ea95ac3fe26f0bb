"""Distribution strategies by name (`train.strategy`).

- `auto`: TensorFlow's MirroredStrategy when one machine has several GPUs, else one device.
- `default`: one device. `mirrored`: MirroredStrategy over every local GPU (TensorFlow backend).
- `data_parallel`: Keras' own distribution API on the JAX backend (`keras.distribution.DataParallel`): every device
  of every process holds a replica and takes its share of each global batch. Several processes (hosts) join when
  Keras' environment variables name them: KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator, host:port),
  KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID. Process 0 is the chief: it alone writes
  outputs and logs to MLflow.
TensorFlow's MultiWorkerMirroredStrategy is not offered: under Keras 3 its `fit` fails (PerReplica values reach
a reduction that expects tensors); see docs/scaling-out.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import keras
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"


class SingleDevice:
    """Stands in for TensorFlow's default strategy under Keras' other backends: one device, nothing to scope."""

    num_replicas_in_sync = 1

    def scope(self) -> AbstractContextManager:
        return nullcontext()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this process stands in a (data-parallel) training: process `index` of `count`."""

    index: int = 0
    count: int = 1
    data_parallel: bool = False

    @property
    def chief(self) -> bool:
        return self.index == 0


SINGLE_PROCESS = Placement()


def start(name: str) -> Placement:
    """Set up `name`'s processes and devices; call it before any other backend work. Idempotent."""
    if name != "data_parallel":
        return SINGLE_PROCESS
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"strategy 'data_parallel' needs Keras' JAX backend, not {keras.backend.backend()!r}: set KERAS_BACKEND=jax"
        )
    import jax

    if int(os.environ.get(PROCESSES_ENV, "1")) > 1 and not jax.distributed.is_initialized():
        # CPU devices of different processes talk over TCP (gloo); GPUs use their own collectives. Set before the
        # backend starts: asking for the devices first would start it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # the coordinator, process count and index from KERAS_DISTRIBUTION_*
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    placement = Placement(jax.process_index(), jax.process_count(), data_parallel=True)
    logger.info("data parallel over %d device(s) in %d process(es); this is process %d", len(devices),
                placement.count, placement.index)  # fmt: skip
    return placement


def gather(model: keras.Model, rebuild) -> keras.Model:
    """After data-parallel training: the trained weights in a plain single-process model (`rebuild()` makes one of
    the same architecture). Every process must call it: it ends the distribution (a collective step)."""
    weights = [np.asarray(w) for w in model.get_weights()]
    keras.distribution.set_distribution(None)
    local = rebuild()
    local.set_weights(weights)
    return local


def stop(placement: Placement) -> None:
    """Leave a multi-process training (a barrier: every process must reach it)."""
    if placement.count > 1:
        import jax

        jax.distributed.shutdown()


def distribution_strategy(name: str) -> tf.distribute.Strategy | SingleDevice:
    """The scope to build a model in: TensorFlow's strategy for "auto", "default" and "mirrored" ("auto" =
    MirroredStrategy over all GPUs when there are several); `SingleDevice` under other backends and for
    "data_parallel", whose distribution is Keras' global setting (see `start`)."""
    backend = keras.backend.backend()
    if backend != "tensorflow" or name == "data_parallel":
        if name == "mirrored":
            raise ValueError(f"strategy 'mirrored' needs Keras' TensorFlow backend, not {backend!r}; use 'auto'")
        return SingleDevice()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logger.info("distribution: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def strategy_scope(model: keras.Model) -> AbstractContextManager:
    """The scope of the strategy `model` was built under (TensorFlow's trainer has one; others do not)."""
    return getattr(model, "distribute_strategy", SingleDevice()).scope()
