"""Stage `explain@<model>`: Grad-CAM heatmaps of one binary model on a fixed, seeded set of CIFAKE test images.

The model scores a seeded, class-balanced sample of `explain.candidates` test images (decided as `evaluate`
decides); up to `explain.per_cell` of them are drawn (seeded) for each row: real called real, real called fake,
fake called fake, fake called real. Only those shown get a Grad-CAM pass.
"""

from realfake.evaluation import explain
from realfake.fileio import atomic_path, write_json
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "evaluate", "explain"])
    ex, seed, threshold = params.explain, params.base.seed, params.evaluate.threshold
    logged = {"seed": seed, "explain": params.raw["explain"], "threshold": threshold, "model": name}
    with tracking.stage_run(
        "explain", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged,
        run_name=f"explain@{name}",
    ):  # fmt: skip
        test = stage.load_split(paths, "test", image_size=params.base.image_size)
        model = load_model(paths.model_file(name), rebuild_with=f"dvc repro train@{name}")
        sample = explain.explain_sample(
            model, test.images, test.labels, test.class_names, candidates=ex.candidates, per_cell=ex.per_cell,
            seed=seed, min_size=ex.min_feature_size, threshold=threshold, batch_size=ex.batch_size,
        )  # fmt: skip
        grid = paths.plots / "explain" / f"{name}.png"
        with atomic_path(grid) as tmp:
            explain.grid_png(sample.images, sample.explained, sample.tiles, class_names=test.class_names,
                             title=f"{name} on CIFAKE test images", path=str(tmp))  # fmt: skip
        summary = {
            "model": name,
            "layer": sample.explained.layer,
            "computed_on": f"{sample.candidates} images of the CIFAKE test split (test.npz), half real, half fake",
            "candidates_accuracy": sample.candidates_accuracy,
            "rows": sample.rows,
        }
        write_json(paths.reports / "explain" / f"{name}.json", summary)
        tracking.log_metrics({"candidates_accuracy": summary["candidates_accuracy"]})
        tracking.log_artifacts(grid, paths.reports / "explain" / f"{name}.json", artifact_path="explain")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
