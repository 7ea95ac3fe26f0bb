"""Stage `explain@<model>`: Grad-CAM heatmaps of one binary model on a fixed, seeded set of CIFAKE test images.

From a seeded, class-balanced sample of `explain.candidates` test images, up to `explain.per_cell` images are
drawn (seeded) for each row: real called real, real called fake, fake called fake, fake called real.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

from realfake import explain, stage, tracking  # noqa: E402
from realfake.classifiers import check_split, load_model  # noqa: E402
from realfake.fileio import atomic_path, load_arrays, write_json  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.prepare import Split  # noqa: E402
from realfake.robustness import stratified_sample  # noqa: E402


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
        test_path = paths.prepared_split("test")
        test = Split.from_arrays(load_arrays(test_path))
        size = params.base.image_size
        check_split(test, image_shape=(size, size, 3), source=str(test_path))
        model = load_model(paths.model_file(name), rebuild_with=f"dvc repro train@{name}")

        chosen = stratified_sample(test.labels, count=ex.candidates, seed=seed)
        images, labels = test.images[chosen], test.labels[chosen]
        explained = explain.explain_batches(
            model, images, min_size=ex.min_feature_size, threshold=threshold, batch_size=ex.batch_size
        )
        cells = explain.select_examples(labels, explained.class_index, per_cell=ex.per_cell, seed=seed)
        grid_rows = rows(cells, test.class_names)

        grid = paths.plots / "explain" / f"{name}.png"
        with atomic_path(grid) as tmp:
            explain.grid_png(
                images, explained, grid_rows, class_names=test.class_names,
                title=f"{name} on CIFAKE test images", path=str(tmp),
            )  # fmt: skip
        shown = {
            label: [{"test_index": int(chosen[i]), "p_fake": float(explained.probabilities[i][-1])} for i in indices]
            for label, indices in grid_rows.items()
        }
        summary = {
            "model": name,
            "layer": explained.layer,
            "computed_on": f"{len(chosen)} images of the CIFAKE test split ({test_path.name}), half real, half fake",
            "candidates_accuracy": float((explained.class_index == labels).mean()),
            "rows": shown,
        }
        write_json(paths.reports / "explain" / f"{name}.json", summary)
        tracking.log_metrics({"candidates_accuracy": summary["candidates_accuracy"]})
        tracking.log_artifacts(grid, paths.reports / "explain" / f"{name}.json", artifact_path="explain")


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT, extra_args=stage.model_arg)
