"""Build and train any classifier of the pipeline from its typed params (shared by train@<model> and train_3class)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from realfake.data.prepare import Split
from realfake.errors import ParamsError
from realfake.models.cnn import build_cnn
from realfake.models.fast import build_fast
from realfake.models.transfer import build_efficientnet, build_resnet50
from realfake.params import CnnParams, EfficientNetParams, FastParams, ModelParams, ResNetParams, TrainParams
from realfake.training import optim
from realfake.training.distribute import SINGLE_PROCESS, Placement, distribution_strategy, gather
from realfake.training.fit import FitResult, TestCurve, fit_classifier
from realfake.training.inputs import Batches
from realfake.training.optim import compile_classifier
from realfake.training.seeding import seed_everything
from realfake.training.state import fingerprint

log = logging.getLogger(__name__)


def build_classifier(
    name: str,
    spec: ModelParams,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    test_time_shifts: bool = True,
) -> keras.Model:
    """The keras model for models.<name>; every model takes uint8-valued RGB pixels and preprocesses inside.

    `test_time_shifts=False` leaves out the fast detector's shifted test-time views (`tta_max_shift`), which
    `train_classifier` adds after training: validating every epoch on 18 views instead of 2 would cost more than the
    epoch's training."""
    key = f"models.{name}"
    if isinstance(spec, CnnParams):
        if num_classes != 2:
            raise ParamsError(f"{key}.architecture: cnn has one sigmoid output (binary); use efficientnet or resnet50")
        return build_cnn(
            input_shape=input_shape,
            conv_filters=spec.conv_filters,
            kernel_size=spec.kernel_size,
            pool_size=spec.pool_size,
            dense_units=spec.dense_units,
        )
    if isinstance(spec, EfficientNetParams):
        return build_efficientnet(
            input_shape=input_shape, num_classes=num_classes, weights=spec.weights, dense_units=spec.dense_units,
            kernel_l2=spec.kernel_l2, activity_l1=spec.activity_l1, bias_l1=spec.bias_l1, dropout=spec.dropout,
            seed=seed, params_key=f"{key}.weights",
        )  # fmt: skip
    if isinstance(spec, ResNetParams):
        return build_resnet50(
            input_shape=input_shape, num_classes=num_classes, weights=spec.weights, dense_units=spec.dense_units,
            dropout=spec.dropout, seed=seed, params_key=f"{key}.weights", batchnorm_momentum=spec.batchnorm_momentum,
        )  # fmt: skip
    if isinstance(spec, FastParams):
        if input_shape[0] % spec.space_to_depth or input_shape[1] % spec.space_to_depth:
            raise ParamsError(
                f"{key}.space_to_depth: {spec.space_to_depth} does not divide the {input_shape[0]}x{input_shape[1]} "
                "images; use a divisor of the image size (1 turns it off)"
            )
        if spec.tta_max_shift >= min(input_shape[:2]):
            raise ParamsError(
                f"{key}.tta_max_shift: {spec.tta_max_shift} px does not fit the {input_shape[0]}x{input_shape[1]} "
                "images; use fewer pixels than the image side"
            )
        model = build_fast(
            input_shape=input_shape, stage_filters=spec.stage_filters, convs_per_stage=spec.convs_per_stage,
            space_to_depth=spec.space_to_depth, dropout=spec.dropout, flip_tta=spec.flip_tta,
            tta_max_shift=spec.tta_max_shift if test_time_shifts else 0, seed=seed, num_classes=num_classes,
        )  # fmt: skip
        if model.count_params() > spec.max_parameters:
            raise ParamsError(
                f"{key}: the network has {model.count_params():,} parameters, over {key}.max_parameters="
                f"{spec.max_parameters:,}; narrow {key}.stage_filters or raise the budget"
            )
        return model
    raise ParamsError(f"{key}: unsupported architecture {type(spec).__name__}")


def build_optimizer(spec: ModelParams, *, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer of models.<name>, with its learning-rate schedule laid out over `steps_per_epoch`."""
    rate = optim.learning_rate_schedule(
        spec.schedule, learning_rate=spec.learning_rate, warmup_epochs=spec.warmup_epochs, epochs=spec.epochs,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    return optim.build_optimizer(spec.optimizer, learning_rate=rate, weight_decay=spec.weight_decay)


def train_classifier(
    name: str,
    spec: ModelParams,
    train_params: TrainParams,
    train: Split,
    val: Split,
    *,
    seed: int,
    state_root: Path,
    test: Split | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    placement: Placement = SINGLE_PROCESS,
) -> tuple[FitResult, Path]:
    """Seed, build, compile and fit models.<name>; returns the fit result and its (resumable) state folder.

    `test`, when given, is scored after every epoch for the accuracy-against-time curve (history columns test_*);
    it is never used to select anything. Under data-parallel training (`placement`, from `distribute.start`) every
    process takes its share of each global batch of `batch_size` images, partial batches are dropped, and the result
    holds the trained weights in a plain single-process model; each process keeps its own state folder.
    """
    image_shape = train.images.shape[1:]
    num_classes = len(train.class_names)
    seed_everything(seed)
    key = fingerprint(  # the backend too: a TensorFlow run's state is not resumed under JAX
        name,
        spec,
        train_params,
        seed,
        keras.backend.backend(),
        arrays=[train.images, train.labels, val.images, val.labels, *([test.images, test.labels] if test else [])],
    )
    state_dir = Path(state_root) / name / (key if placement.chief else f"{key}-process{placement.index}")
    if placement.data_parallel and test is not None:
        raise ParamsError(f"models.{name}.test_curve: not available with train.strategy data_parallel; set it false")
    sharding = {"shard": (placement.index, placement.count), "drop_remainder": placement.data_parallel}
    train_batches = Batches(
        train.images, train.labels, batch_size=spec.batch_size, seed=seed, shuffle=True, augment=spec.augment,
        max_shift=spec.max_shift, degrade=spec.degrade, **sharding,
    )  # fmt: skip
    val_batches = Batches(val.images, val.labels, batch_size=spec.batch_size, **sharding)

    def build(test_time_shifts: bool = False) -> keras.Model:
        return build_classifier(name, spec, input_shape=image_shape, num_classes=num_classes, seed=seed,
                                test_time_shifts=test_time_shifts)  # fmt: skip

    with distribution_strategy(train_params.strategy).scope():
        model = build()
        compile_classifier(
            model,
            optimizer=build_optimizer(spec, steps_per_epoch=train_batches.steps_per_epoch),
            jit_compile=spec.jit_compile,
            run_eagerly=train_params.run_eagerly,
            label_smoothing=spec.label_smoothing,
        )
    curve = TestCurve(test.images, test.labels, batch_size=spec.batch_size) if test is not None else None
    log.info("training %s (%d parameters) on %d images, validating on %d", name, model.count_params(),
             len(train.labels), len(val.labels))  # fmt: skip
    result = fit_classifier(
        model,
        train_batches,
        val_batches,
        epochs=spec.epochs,
        state_dir=state_dir,
        fingerprint=key,
        monitor=train_params.monitor,
        mode=train_params.monitor_mode,
        early_stopping_patience=train_params.early_stopping_patience,
        max_train_minutes=spec.max_train_minutes,
        validate_every_steps=spec.validate_every_steps,
        test_curve=curve,
        extra_callbacks=extra_callbacks,
    )
    if placement.data_parallel:
        result.model = gather(result.model, build)
    if isinstance(spec, FastParams) and spec.tta_max_shift:  # the test-time shifts join after training
        final = build(test_time_shifts=True)
        final.set_weights(result.model.get_weights())
        result.model = final
    return result, state_dir


def train_summary(result: FitResult, model: keras.Model, *, train_images: int, val_images: int) -> dict:
    """What metrics/train/<name>.json reports: the best validation epoch, time and throughput."""
    speeds = [s for s in result.history.get("train_images_per_s", []) if s]
    return {
        "best_epoch": result.best_epoch,
        "best": {k: float(v) for k, v in result.best_metrics.items() if isinstance(v, int | float)},
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "stopped_by_budget": result.stopped_by_budget,
        "resumed_after_epoch": result.resumed_epochs,
        "train_seconds": round(result.train_seconds, 2),
        # the first epoch includes tracing/compilation; the median of the rest is the steady-state speed
        "train_images_per_s": round(float(np.median(speeds[1:] or speeds)), 1) if speeds else None,
        "parameters": int(model.count_params()),
        "train_images": train_images,
        "val_images": val_images,
        "selected_on": "validation split carved from train (test split not used)",
    }
