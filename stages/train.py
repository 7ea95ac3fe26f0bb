"""Stage `train@<model>`: train one classifier on the prepared arrays; the validation split picks the best epoch.

Interrupted (SIGTERM, Ctrl-C, a crash)? Run `dvc repro` again: training resumes after the last finished epoch from
state kept in .cache/state (outside DVC's outputs, which DVC deletes before running a stage).
"""

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

import keras  # noqa: E402

from realfake import stage, tracking  # noqa: E402
from realfake.classifiers import check_split, save_model, train_classifier, train_summary  # noqa: E402
from realfake.fileio import atomic_path, load_arrays, write_json  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.prepare import Split  # noqa: E402
from realfake.training import clear_state  # noqa: E402


class MlflowEpochs(keras.callbacks.Callback):
    """Mirror each finished epoch's metrics to the stage's MLflow run."""

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics(logs or {}, step=epoch + 1)


def load_split(paths, name: str, image_size: int) -> Split:
    path = paths.prepared_split(name)
    split = Split.from_arrays(load_arrays(path))
    check_split(split, image_shape=(image_size, image_size, 3), source=str(path))
    return split


def write_history(path: Path, history: dict) -> None:
    keys = list(history)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(keys)
        writer.writerows(zip(*(history[k] for k in keys), strict=True))


def train_and_save(paths, params, name: str, train: Split, val: Split, *, stage_name: str) -> dict:
    """Train models.<name>, write its declared outputs, mirror them to MLflow; shared with train_3class."""
    spec = params.models[name]
    result, state_dir = train_classifier(
        name, spec, params.train, train, val, seed=params.base.seed, state_root=paths.state / stage_name,
        extra_callbacks=[MlflowEpochs()],
    )  # fmt: skip
    for epoch in range(result.resumed_epochs):  # epochs finished before an interruption, logged by an earlier run
        tracking.log_metrics({k: v[epoch] for k, v in result.history.items()}, step=epoch + 1)
    summary = train_summary(result, result.model, train_images=len(train.labels), val_images=len(val.labels))
    save_model(result.model, paths.model_file(name))
    write_history(paths.plots / "train" / f"{name}.csv", result.history)
    write_json(paths.metrics / "train" / f"{name}.json", summary)
    tracking.log_artifacts(paths.metrics / "train" / f"{name}.json")
    tracking.log_registered_model(  # the summary goes to the run and to the registered model as final.*
        paths.model_file(name), registered_name=f"{params.base.registered_model_prefix}{name}",
        class_names=train.class_names, image_shape=train.images.shape[1:], batch_size=spec.batch_size,
        metrics={"final": summary},
    )  # fmt: skip
    clear_state(state_dir)
    return summary


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "train", f"models.{name}"])
    logged = {"seed": params.base.seed, "train": params.raw["train"], "model": params.raw["models"][name]}
    with tracking.stage_run(
        "train", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged, run_name=f"train@{name}"
    ):
        train = load_split(paths, "train", params.base.image_size)
        val = load_split(paths, "val", params.base.image_size)
        train_and_save(paths, params, name, train, val, stage_name="train")


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT, extra_args=stage.model_arg)
