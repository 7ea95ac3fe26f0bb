"""Stage `train@<model>`: train one classifier on the prepared arrays; the validation split picks the best epoch.

A binary model then gets its temperature and false-positive-rate thresholds (validation split) and its
out-of-distribution statistics (train split). With `models.<name>.test_curve`, the test split is scored after every
epoch for the accuracy-against-time plot; it selects nothing.
Interrupted (SIGTERM, Ctrl-C, a crash)? Run `dvc repro` again: training resumes exactly after the last finished
epoch from state kept in .cache/state (outside DVC's outputs, which DVC deletes before running a stage).
With `train.strategy: data_parallel` and Keras' KERAS_DISTRIBUTION_* variables, several processes train one model
together; only process 0 (the one DVC starts) writes outputs and logs to MLflow (docs/scaling-out.md).
"""

from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.pipeline.training_run import MlflowEpochs, publish
from realfake.training import distribute
from realfake.training.classifiers import train_classifier, train_summary
from realfake.training.posthoc import fit_detector
from realfake.training.state import clear_state


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "train", "detector", f"models.{name}"])
    placement = distribute.start(params.train.strategy)  # before any other backend work
    spec, size, seed, state_root = params.models[name], params.base.image_size, params.base.seed, paths.state / "train"
    train, val = (stage.load_split(paths, split, image_size=size) for split in ("train", "val"))
    if not placement.chief:  # a data-parallel process other than the chief: it trains its share and writes nothing
        _, state_dir = train_classifier(name, spec, params.train, train, val, seed=seed, state_root=state_root,
                                        placement=placement)  # fmt: skip
        distribute.stop(placement)
        clear_state(state_dir)
        return
    logged = {"seed": seed, "train": params.raw["train"], "detector": params.raw["detector"],
              "model": params.raw["models"][name]}  # fmt: skip
    with tracking.stage_run(
        "train", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged, run_name=f"train@{name}"
    ):
        test = stage.load_split(paths, "test", image_size=size) if spec.test_curve else None
        result, state_dir = train_classifier(
            name, spec, params.train, train, val, seed=seed, state_root=state_root, test=test,
            extra_callbacks=[MlflowEpochs()], placement=placement,
        )  # fmt: skip
        distribute.stop(placement)  # the other processes are done; the rest happens here alone
        summary = train_summary(result, result.model, train_images=len(train.labels), val_images=len(val.labels))
        model, detector, summary["detector"] = fit_detector(result.model, train, val, params=params.detector, seed=seed)
        publish(
            paths, name=name, result=result, model=model, summary=summary, detector=detector, state_dir=state_dir,
            registered_name=f"{params.base.registered_model_prefix}{name}", class_names=train.class_names,
            image_shape=train.images.shape[1:], batch_size=spec.batch_size,
        )  # fmt: skip


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
