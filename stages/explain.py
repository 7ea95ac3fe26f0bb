"""Stage `explain@<model>`: Grad-CAM heatmaps of one binary model on a fixed, seeded set of CIFAKE test images.

The model scores a seeded, class-balanced sample of `explain.candidates` test images (decided as `evaluate`
decides); up to `explain.per_cell` of them are drawn (seeded) for each row: real called real, real called fake,
fake called fake, fake called real. Only those shown get a Grad-CAM pass.
"""

from realfake.data.prepare import stratified_sample
from realfake.evaluation import explain
from realfake.evaluation import scoring as evaluation
from realfake.fileio import atomic_path, write_json
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def rows(cells: dict, class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """Grid rows in reading order, e.g. "real, called real" / "real, called fake"."""
    named = {}
    for (label, correct), indices in sorted(cells.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        called = class_names[label] if correct else "/".join(n for i, n in enumerate(class_names) if i != label)
        named[f"{class_names[label]}, called {called}"] = [int(i) for i in indices]
    return named


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

        chosen = stratified_sample(test.labels, count=ex.candidates, seed=seed)
        labels = test.labels[chosen]
        probabilities = evaluation.predict_proba(model, test.images[chosen], batch_size=ex.batch_size)
        predicted = evaluation.predict_labels(probabilities, threshold=threshold)
        grid_rows = rows(explain.select_examples(labels, predicted, per_cell=ex.per_cell, seed=seed), test.class_names)
        shown = [i for indices in grid_rows.values() for i in indices]  # candidate positions, row by row
        shown_images = test.images[chosen[shown]]
        explained = explain.gradcam(
            model, shown_images, min_size=ex.min_feature_size, threshold=threshold, class_index=predicted[shown]
        )
        tiles, start = {}, 0
        for label, indices in grid_rows.items():  # the same rows, as positions in `shown`
            tiles[label], start = list(range(start, start + len(indices))), start + len(indices)

        grid = paths.plots / "explain" / f"{name}.png"
        with atomic_path(grid) as tmp:
            explain.grid_png(
                shown_images, explained, tiles, class_names=test.class_names,
                title=f"{name} on CIFAKE test images", path=str(tmp),
            )  # fmt: skip
        p_fake = evaluation.p_fake(probabilities)
        summary = {
            "model": name,
            "layer": explained.layer,
            "computed_on": f"{len(chosen)} images of the CIFAKE test split (test.npz), half real, half fake",
            "candidates_accuracy": float((predicted == labels).mean()),
            "rows": {
                label: [{"test_index": int(chosen[i]), "p_fake": float(p_fake[i])} for i in indices]
                for label, indices in grid_rows.items()
            },
        }
        write_json(paths.reports / "explain" / f"{name}.json", summary)
        tracking.log_metrics({"candidates_accuracy": summary["candidates_accuracy"]})
        tracking.log_artifacts(grid, paths.reports / "explain" / f"{name}.json", artifact_path="explain")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
