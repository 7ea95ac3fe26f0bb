"""The outputs and MLflow records of a classifier training, shared by the `train@<model>` and `train_3class` stages:
the saved model (and detector extras), the per-epoch history, the summary metrics, the registered model version."""

from __future__ import annotations

from pathlib import Path

import keras

from realfake.fileio import atomic_paths, write_csv, write_json
from realfake.models.detector import info_path, save_info
from realfake.models.saving import save_model
from realfake.pipeline import model_registry, process, stage, tracking
from realfake.training.state import clear_state

SELECTION_METRIC = "best.val_accuracy"  # the registry's champion is the version with the best validation accuracy


class MlflowEpochs(keras.callbacks.Callback):
    """Mirror each finished epoch's metrics to the stage's MLflow run."""

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics(logs or {}, step=epoch + 1)


def write_history(path: Path, history: dict) -> None:
    write_csv(path, list(history), zip(*history.values(), strict=True))


def publish(paths, *, name: str, result, model: keras.Model, summary: dict, detector, state_dir: Path,
            registered_name: str, class_names, image_shape, batch_size: int) -> None:  # fmt: skip
    """Write models/<name>.keras (+ .detector.npz), plots/train/<name>.csv and metrics/train/<name>.json together: all
    are staged first, and they replace the previous ones only if params.yaml is still what the stage read, so an
    interrupted or refused stage leaves the last good model beside its own metrics. Then log them to the active
    MLflow run, register the model and delete the training state."""
    for epoch in range(result.resumed_epochs):  # epochs finished before an interruption, logged by an earlier run
        tracking.log_metrics({k: v[epoch] for k, v in result.history.items()}, step=epoch + 1)
    summary["machine"] = process.machine_description()
    summary["training_fingerprint"] = state_dir.name  # params, data and backend it trained with (training.state)
    model_file = paths.model_file(name)
    history_file = paths.plots / "train" / f"{name}.csv"
    metrics_file = paths.metrics / "train" / f"{name}.json"
    outputs = [model_file, history_file, metrics_file] + ([info_path(model_file)] if detector is not None else [])
    # SIGTERM waits until every output is replaced: never a new model beside the previous one's metrics
    with atomic_paths(*outputs, commit_guard=process.shielded) as (model_tmp, history_tmp, metrics_tmp, *info_tmp):
        save_model(model, model_tmp)
        if detector is not None:
            save_info(info_tmp[0], detector)
        write_history(history_tmp, result.history)
        write_json(metrics_tmp, summary)
        stage.check_params_unchanged()
    tracking.log_artifacts(metrics_file, history_file)
    tracking.set_tags(summary, prefix="summary.")  # per-run facts, kept out of the per-epoch charts
    extras = {"detector": info_path(model_file)} if detector is not None else {}
    model_registry.log_registered_model(
        model_file, registered_name=registered_name, class_names=class_names, image_shape=image_shape,
        batch_size=batch_size, summary=summary, selection_metric=SELECTION_METRIC, extra_artifacts=extras,
    )  # fmt: skip
    clear_state(state_dir)
