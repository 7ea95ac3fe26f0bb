"""Build and train any classifier of the pipeline from its typed params (shared by train@<model> and train_3class)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from realfake import models, training
from realfake.errors import DataError, ParamsError
from realfake.fileio import atomic_path
from realfake.params import CnnParams, EfficientNetParams, FastParams, ModelParams, ResNetParams, TrainParams
from realfake.prepare import Split

log = logging.getLogger(__name__)


def build_classifier(
    name: str, spec: ModelParams, *, input_shape: tuple[int, int, int], num_classes: int, seed: int
) -> keras.Model:
    """The keras model for models.<name>; every model takes uint8-valued RGB pixels and preprocesses inside."""
    key = f"models.{name}"
    if isinstance(spec, CnnParams):
        if num_classes != 2:
            raise ParamsError(f"{key}.architecture: cnn has one sigmoid output (binary); use efficientnet or resnet50")
        return models.build_cnn(
            input_shape=input_shape,
            conv_filters=spec.conv_filters,
            kernel_size=spec.kernel_size,
            pool_size=spec.pool_size,
            dense_units=spec.dense_units,
        )
    if isinstance(spec, EfficientNetParams):
        return models.build_efficientnet(
            input_shape=input_shape, num_classes=num_classes, weights=spec.weights, dense_units=spec.dense_units,
            kernel_l2=spec.kernel_l2, activity_l1=spec.activity_l1, bias_l1=spec.bias_l1, dropout=spec.dropout,
            seed=seed, params_key=f"{key}.weights",
        )  # fmt: skip
    if isinstance(spec, ResNetParams):
        return models.build_resnet50(
            input_shape=input_shape, num_classes=num_classes, weights=spec.weights, dense_units=spec.dense_units,
            dropout=spec.dropout, seed=seed, params_key=f"{key}.weights",
        )  # fmt: skip
    if isinstance(spec, FastParams):
        if num_classes != 2:
            raise ParamsError(f"{key}.architecture: fast has one sigmoid output (binary); use efficientnet or resnet50")
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
        model = models.build_fast(
            input_shape=input_shape, stage_filters=spec.stage_filters, convs_per_stage=spec.convs_per_stage,
            space_to_depth=spec.space_to_depth, dropout=spec.dropout, flip_tta=spec.flip_tta,
            tta_max_shift=spec.tta_max_shift, seed=seed,
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
    rate = training.learning_rate_schedule(
        spec.schedule, learning_rate=spec.learning_rate, warmup_epochs=spec.warmup_epochs, epochs=spec.epochs,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    return training.build_optimizer(spec.optimizer, learning_rate=rate, weight_decay=spec.weight_decay)


def check_split(split: Split, *, image_shape: tuple[int, int, int], source: str) -> None:
    """Refuse arrays a model cannot take, naming the file and the stage that rebuilds it."""
    images = split.images
    if images.ndim != 4 or images.shape[1:] != image_shape or images.dtype != np.uint8:
        raise DataError(
            f"{source}: images are {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, image_shape))}"
            f"); rebuild it with `dvc repro prepare` (or check base.image_size)"
        )
    if len(split.labels) != len(images) or len(images) == 0:
        raise DataError(f"{source}: {len(images)} images but {len(split.labels)} labels; rebuild it with `dvc repro`")
    if split.labels.max() >= len(split.class_names):
        raise DataError(f"{source}: label {split.labels.max()} outside class_names {list(split.class_names)}")


def train_classifier(
    name: str,
    spec: ModelParams,
    train_params: TrainParams,
    train: Split,
    val: Split,
    *,
    seed: int,
    state_root: Path,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[training.FitResult, Path]:
    """Seed, build, compile and fit models.<name>; returns the fit result and its (resumable) state folder."""
    image_shape = train.images.shape[1:]
    num_classes = len(train.class_names)
    training.seed_everything(seed)
    key = training.fingerprint(  # the backend too: a TensorFlow run's state is not resumed under JAX
        name,
        spec,
        train_params,
        seed,
        keras.backend.backend(),
        arrays=[train.images, train.labels, val.images, val.labels],
    )
    state_dir = Path(state_root) / name / key
    strategy = training.distribution_strategy(train_params.strategy)
    with strategy.scope():
        model = build_classifier(name, spec, input_shape=image_shape, num_classes=num_classes, seed=seed)
        training.compile_classifier(
            model,
            optimizer=build_optimizer(spec, steps_per_epoch=math.ceil(len(train.labels) / spec.batch_size)),
            jit_compile=spec.jit_compile,
            run_eagerly=train_params.run_eagerly,
            label_smoothing=spec.label_smoothing,
        )
    train_ds = training.make_dataset(
        train.images,
        train.labels,
        batch_size=spec.batch_size,
        shuffle=True,
        seed=seed,
        augment=spec.augment,
        max_shift=spec.max_shift,
    )
    val_ds = training.make_dataset(val.images, val.labels, batch_size=spec.batch_size, shuffle=False, seed=seed,
                                   augment=(), max_shift=0)  # fmt: skip
    log.info("training %s (%d parameters) on %d images, validating on %d", name, model.count_params(),
             len(train.labels), len(val.labels))  # fmt: skip
    result = training.fit_classifier(
        model,
        train_ds,
        val_ds,
        epochs=spec.epochs,
        state_dir=state_dir,
        fingerprint=key,
        monitor=train_params.monitor,
        mode=train_params.monitor_mode,
        early_stopping_patience=train_params.early_stopping_patience,
        extra_callbacks=extra_callbacks,
    )
    return result, state_dir


def train_summary(result: training.FitResult, model: keras.Model, *, train_images: int, val_images: int) -> dict:
    """What metrics/train/<name>.json reports: the best validation epoch, time and throughput."""
    speeds = [s for s in result.history.get("train_images_per_s", []) if s]
    return {
        "best_epoch": result.best_epoch,
        "best": {k: float(v) for k, v in result.best_metrics.items() if isinstance(v, int | float)},
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "resumed_after_epoch": result.resumed_epochs,
        "train_seconds": round(result.train_seconds, 2),
        # the first epoch includes tracing/compilation; the median of the rest is the steady-state speed
        "train_images_per_s": round(float(np.median(speeds[1:] or speeds)), 1) if speeds else None,
        "parameters": int(model.count_params()),
        "train_images": train_images,
        "val_images": val_images,
        "selected_on": "validation split carved from train (test split not used)",
    }


def save_model(model: keras.Model, path: Path) -> None:
    """Write `model` to `path` (.keras, atomically) as an inference artifact: architecture and weights, without
    the optimizer's state or compile settings. Adam-family slots would triple the file (EfficientNetV2B3: 161 MB
    instead of 55) for nothing: consumers load it uncompiled, and an interrupted fit resumes from its own state
    folder, not from this file.
    """
    optimizer, compiled = getattr(model, "optimizer", None), model.compiled
    model.optimizer, model.compiled = None, False  # Keras 3 has no include_optimizer=False
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    finally:
        model.optimizer, model.compiled = optimizer, compiled


def load_model(path: Path, *, rebuild_with: str) -> keras.Model:
    """Load a saved model in Keras' safe mode; a missing or unreadable file names the command that rebuilds it."""
    import realfake.models  # noqa: F401  (registers the custom layers saved models refer to)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found; build it with `{rebuild_with}`")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a loadable Keras model ({exc}); rebuild it with `{rebuild_with}`") from exc
