"""Stage `evaluate@<model>`: score one binary model on CIFAKE's test split (the only stage that reads it for this).

Metrics are computed on every image of the prepared test split (real = CIFAR-10 photos, fake = Stable Diffusion),
with bootstrap confidence intervals; P(fake) comes from the same function for the sigmoid CNN and softmax models.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

from realfake import evaluation, stage, tracking  # noqa: E402
from realfake.classifiers import load_model  # noqa: E402
from realfake.fileio import atomic_path, write_json  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.prepare import Split  # noqa: E402


def evaluate(model, test: Split, ev, seed: int) -> tuple[dict, str, list, list]:
    """(metrics, classification report text, ROC points, confusion rows) of `model` on `test`."""
    probabilities = evaluation.predict_proba(model, test.images, batch_size=ev.batch_size)
    scores = evaluation.p_fake(probabilities)
    y_pred = evaluation.binary_predictions(scores, threshold=ev.threshold)
    report = evaluation.binary_report(
        test.labels, scores, threshold=ev.threshold, class_names=test.class_names, n_bootstrap=ev.n_bootstrap,
        confidence=ev.confidence, seed=seed,
    )  # fmt: skip
    text = evaluation.classification_report_text(test.labels, y_pred, test.class_names)
    roc = evaluation.roc_points(test.labels, scores, max_points=ev.roc_max_points)
    return report, text, roc, evaluation.confusion_rows(test.labels, y_pred, test.class_names)


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "evaluate"])
    logged = {"seed": params.base.seed, "evaluate": params.raw["evaluate"], "model": name}
    with tracking.stage_run(
        "evaluate", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged,
        run_name=f"evaluate@{name}",
    ):  # fmt: skip
        test, test_path = stage.load_test_split(paths, image_size=params.base.image_size)
        model = load_model(paths.model_file(name), rebuild_with=f"dvc repro train@{name}")
        report, text, roc, confusion = evaluate(model, test, params.evaluate, params.base.seed)
        report = {"model": name, "computed_on": f"CIFAKE test split as prepared ({test_path.name})"} | report

        write_json(paths.metrics / "evaluate" / f"{name}.json", report)
        with atomic_path(paths.reports / "evaluate" / f"{name}.txt") as tmp:
            tmp.write_text(f"{name} on {report['computed_on']}, n={report['n']}\n\n{text}")
        write_json(paths.plots / "evaluate" / name / "roc.json", roc)
        write_json(paths.plots / "evaluate" / name / "confusion.json", confusion)
        tracking.log_metrics(report)
        tracking.log_artifacts(
            paths.metrics / "evaluate" / f"{name}.json", paths.reports / "evaluate" / f"{name}.txt",
            paths.plots / "evaluate" / name,
        )  # fmt: skip


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT, extra_args=stage.model_arg)
