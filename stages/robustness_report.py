"""Stage `robustness_report`: every binary model's robustness side by side, as a Markdown table and a heatmap."""

import json

from realfake.errors import DataError
from realfake.evaluation import reports
from realfake.evaluation.plots import heatmap_png
from realfake.evaluation.robustness import accuracy_matrix
from realfake.fileio import atomic_path
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "train_3class", "models"])
    names = [name for name in params.models if name not in params.train_3class.models]
    with tracking.stage_run(
        "robustness_report", repo_root=paths.root, experiment=params.base.mlflow_experiment, params={"models": names}
    ):
        by_model = {}
        for name in names:
            path = paths.metrics / "robustness" / f"{name}.json"
            if not path.is_file():
                raise DataError(f"{path}: not found; make it with `dvc repro evaluate@{name}`")
            by_model[name] = json.loads(path.read_text())
        first = next(iter(by_model.values()))
        heatmap = paths.plots / "robustness" / "heatmap.png"
        with atomic_path(heatmap) as tmp:
            heatmap_png(*accuracy_matrix(by_model), "Test accuracy under perturbation", str(tmp))
        text = reports.robustness_text(
            by_model, computed_on=first["computed_on"], threshold=first["threshold"], confidence=first["confidence"]
        )
        with atomic_path(paths.reports / "robustness.md") as tmp:
            tmp.write_text(text)
        tracking.log_artifacts(paths.reports / "robustness.md")
        tracking.log_artifacts(heatmap, artifact_path="plots")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
