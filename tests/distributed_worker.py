"""One data-parallel training under Keras' JAX backend, for tests/test_distributed.py; prints its result as JSON.

    KERAS_BACKEND=jax python tests/distributed_worker.py STRATEGY STATE_DIR
(with XLA_FLAGS=--xla_force_host_platform_device_count=2 for two devices in one process)
"""

import json
import sys
from pathlib import Path

import numpy as np

from realfake.data.prepare import Split
from realfake.params import FastParams, TrainParams
from realfake.training import distribute
from realfake.training.classifiers import train_classifier

GLOBAL_BATCH = 32


def splits() -> tuple[Split, Split]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (192, 32, 32, 3), dtype=np.uint8)
    labels = (images[..., 0].mean(axis=(1, 2)) > 127.5).astype(np.uint8)
    return (Split(images[:128], labels[:128], ("real", "fake")), Split(images[128:], labels[128:], ("real", "fake")))


def spec() -> FastParams:
    return FastParams(
        architecture="fast", epochs=2, batch_size=GLOBAL_BATCH, optimizer="sgd", learning_rate=0.05,
        schedule="constant", warmup_epochs=0.0, weight_decay=0.0, label_smoothing=0.0, augment=("hflip",),
        max_shift=1, degrade=(), max_train_minutes=None, validate_every_steps=None, test_curve=False,
        jit_compile="auto", stage_filters=(4, 8), convs_per_stage=1, space_to_depth=2, dropout=0.0, flip_tta=False,
        tta_max_shift=0, max_parameters=10**6,
    )  # fmt: skip


def main(strategy: str, state_root: Path) -> None:
    import jax
    import keras

    placement = distribute.start(strategy)
    layout = None
    if placement.data_parallel:
        data_layout = keras.distribution.distribution().get_data_layout((GLOBAL_BATCH, 32, 32, 3))
        layout = {"axes": list(data_layout.axes), "mesh": list(data_layout.device_mesh.shape)}
    train, val = splits()
    params = TrainParams(strategy=strategy, monitor="val_accuracy", monitor_mode="max", early_stopping_patience=None,
                         run_eagerly=False)  # fmt: skip
    result, _ = train_classifier("fast", spec(), params, train, val, seed=0, state_root=state_root,
                                 placement=placement)  # fmt: skip
    distribute.stop(placement)
    weights = np.concatenate([w.ravel() for w in result.model.get_weights()])
    print(json.dumps({
        "process": placement.index, "processes": placement.count, "devices": jax.device_count(), "layout": layout,
        "loss": result.history["loss"], "val_loss": result.history["val_loss"], "weights_sum": float(weights.sum()),
        "weights_head": weights[:64].tolist(),
    }))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
