"""Stage `train_3class@<model>`: retrain with three classes (real / Stable Diffusion / DCGAN) through the classifiers'
code; one stage per name in `train_3class.models` (the reference study's EfficientNetV2B3 and the fast detector).

Train and validation: the prepared real and SD splits plus the generated DCGAN train images, of which
`train_3class.val_fraction` is held out for validation. The test split is not read here.
"""

from realfake.data.threeclass import three_class_splits
from realfake.errors import DataError, ParamsError
from realfake.fileio import load_arrays
from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.pipeline.training_run import MlflowEpochs, publish
from realfake.training.classifiers import train_classifier, train_summary


def load_generated(paths, image_size: int):
    path = paths.generated_split("train")
    if not path.is_file():
        raise DataError(f"{path}: DCGAN images not found; make them with `dvc repro generate`")
    images = load_arrays(path)["images"]
    if images.shape[1:] != (image_size, image_size, 3):
        raise DataError(f"{path}: images are {images.shape}, expected (N, {image_size}, {image_size}, 3)")
    return images


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "prepare", "train", "train_3class", f"models.{name}"])
    if name not in params.train_3class.models:
        raise ParamsError(f"train_3class.models: {name!r} is not listed ({', '.join(params.train_3class.models)})")
    spec, size = params.models[name], params.base.image_size
    logged = {"seed": params.base.seed, "train": params.raw["train"], "train_3class": params.raw["train_3class"],
              "model": params.raw["models"][name]}  # fmt: skip
    with tracking.stage_run(
        "train_3class", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged,
        run_name=f"train_3class@{name}",
    ):  # fmt: skip
        train, val = three_class_splits(
            stage.load_split(paths, "train", image_size=size), stage.load_split(paths, "val", image_size=size),
            load_generated(paths, size), val_fraction=params.train_3class.val_fraction,
            augmentations=params.prepare.augment, seed=params.base.seed,
        )  # fmt: skip
        tracking.set_tags({"train": train.counts(), "val": val.counts()}, prefix="images.")
        result, state_dir = train_classifier(
            name, spec, params.train, train, val, seed=params.base.seed, state_root=paths.state / "train_3class",
            extra_callbacks=[MlflowEpochs()],
        )  # fmt: skip
        summary = train_summary(result, result.model, train_images=len(train.labels), val_images=len(val.labels))
        publish(
            paths, name=name, result=result, model=result.model, summary=summary, detector=None, state_dir=state_dir,
            registered_name=f"{params.base.registered_model_prefix}{name}", class_names=train.class_names,
            image_shape=train.images.shape[1:], batch_size=spec.batch_size,
        )  # fmt: skip


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
