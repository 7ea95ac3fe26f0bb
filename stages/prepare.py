"""Stage `prepare`: sample per class, carve a validation split, augment, shuffle; write uint8 train/val/test arrays."""

from realfake.data.prepare import prepare_splits
from realfake.fileio import atomic_path, save_arrays, write_json
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "prepare"])
    section = {"seed": params.base.seed, "prepare": params.raw["prepare"]}
    with tracking.stage_run("prepare", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section):
        raw = stage.load_raw(paths)
        p = params.prepare
        splits, report = prepare_splits(
            raw, per_class=p.per_class, val_fraction=p.val_fraction, augmentations=p.augment,
            drop_test_overlap=p.drop_test_overlap, seed=params.base.seed,
        )  # fmt: skip
        with atomic_path(paths.prepared, is_dir=True) as folder:
            for name, split in splits.items():
                save_arrays(folder / f"{name}.npz", **split.arrays())
        write_json(paths.metrics / "prepare.json", report)
        tracking.log_metrics(report)
        tracking.log_artifacts(paths.metrics / "prepare.json")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
