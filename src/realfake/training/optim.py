"""Optimizers, learning-rate schedules and compiling a classifier."""

from __future__ import annotations

from typing import Literal

import keras


def learning_rate_schedule(
    name: str, *, learning_rate: float, warmup_epochs: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate per optimizer step. Schedule "constant": `learning_rate`; "warmup_cosine": a linear rise
    from 0 to `learning_rate` over `warmup_epochs`, then a cosine decay to 0 at the end of the last epoch.
    Steps count optimizer updates, so a resumed run continues the schedule where it stopped (the iteration
    count is saved with the weights).
    """
    if name == "constant":
        return learning_rate
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=learning_rate, warmup_steps=warmup, decay_steps=total - warmup
    )


def build_optimizer(
    name: str,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name with decoupled `weight_decay` (0 = none; BatchNorm and biases are exempt);
    its other settings keep Keras' defaults.
    """
    classes = {
        "adam": keras.optimizers.Adam,
        "adamax": keras.optimizers.Adamax,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
    }
    # Passed explicitly, or AdamW applies its own default of 0.004; None skips the decay step (AdamW needs a float).
    decay = weight_decay if weight_decay or name == "adamw" else None
    optimizer = classes[name](learning_rate=learning_rate, weight_decay=decay)
    if weight_decay:
        # Decaying BatchNorm scales/shifts and biases only fights the normalisation (matched by variable name).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_classifier(
    model: keras.Model,
    *,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool | Literal["auto"],
    run_eagerly: bool,
    label_smoothing: float,
) -> keras.Model:
    """Compile for integer labels: one sigmoid unit -> binary cross-entropy, else softmax -> sparse categorical.

    The accuracy metric is named "accuracy" either way, so histories and monitors read the same for all models.
    `label_smoothing` pulls the binary targets towards 0.5 (Keras' sparse categorical loss has no smoothing).
    """
    units = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    if units is None:
        raise ValueError(f"model {model.name!r}: expected one output tensor, got {len(model.outputs)}")
    if label_smoothing and units != 1:
        raise ValueError(f"model {model.name!r}: label_smoothing needs a one-unit sigmoid output, not {units} units")
    if units == 1:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy], jit_compile=jit_compile, run_eagerly=run_eagerly)
    return model
