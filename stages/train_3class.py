"""Stage `train_3class@<model>`: retrain with three classes (real / Stable Diffusion / DCGAN) through the classifiers'
code; one stage per name in `train_3class.models` (the reference study's EfficientNetV2B3 and the fast detector).

Train: the prepared real and SD train split, or `train_3class.cifake_per_class` distinct images per class drawn from
the whole archive, plus the generated DCGAN train images, of which `train_3class.val_fraction` is held out for
validation beside the prepared validation split. The test split is not read here.
"""

from realfake.data.threeclass import archive_sample, load_dcgan_train, three_class_splits
from realfake.errors import ParamsError
from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.pipeline.training_run import MlflowEpochs, publish
from realfake.training.classifiers import train_classifier, train_summary


def real_and_sd(paths, params, val):
    """The real and SD train images, and the stored augmented copies that every class then gets."""
    per_class, size = params.train_3class.cifake_per_class, params.base.image_size
    if per_class is None:
        return stage.load_split(paths, "train", image_size=size), params.prepare.augment
    raw = stage.load_raw(paths)
    train, report = archive_sample(raw, per_class=per_class, val=val, seed=params.base.seed,
                                   drop_test_overlap=params.prepare.drop_test_overlap)  # fmt: skip
    tracking.set_tags(report, prefix="archive_sample.")
    return train, ()


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "prepare", "train", "train_3class", f"models.{name}"])
    if name not in params.train_3class.models:
        raise ParamsError(f"train_3class.models: {name!r} is not listed ({', '.join(params.train_3class.models)})")
    spec, size, seed = params.models[name], params.base.image_size, params.base.seed
    logged = {"seed": seed, "train": params.raw["train"], "train_3class": params.raw["train_3class"],
              "model": params.raw["models"][name]}  # fmt: skip
    with tracking.stage_run("train_3class", repo_root=paths.root, experiment=params.base.mlflow_experiment,
                            params=logged, run_name=f"train_3class@{name}"):  # fmt: skip
        val = stage.load_split(paths, "val", image_size=size)
        train, copies = real_and_sd(paths, params, val)
        dcgan = load_dcgan_train(paths.generated_split("train"), image_size=size)
        train, val = three_class_splits(train, val, dcgan, val_fraction=params.train_3class.val_fraction,
                                        augmentations=copies, seed=seed)  # fmt: skip
        tracking.set_tags({"train": train.counts(), "val": val.counts()}, prefix="images.")
        result, state_dir = train_classifier(
            name, spec, params.train, train, val, seed=seed, state_root=paths.state / "train_3class",
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
