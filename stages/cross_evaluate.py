"""Stage `cross_evaluate`: every trained classifier on every test source (CIFAKE real, SD fakes, DCGAN fakes), and
for each binary detector how often it at least warns (calls fake or flags out of distribution) on each source."""

from realfake.evaluation import cross, cross_suite, reports
from realfake.evaluation.plots import heatmap_png
from realfake.fileio import atomic_path, write_json
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def mlflow_metrics(scores: dict) -> dict:
    """Scores with each interval as two numbers: MLflow keys like cnn.dcgan_fake.ci_low (lists are no metrics)."""
    return {
        model: {source: s | {"ci_low": s["ci"][0], "ci_high": s["ci"][1]} for source, s in by_source.items()}
        for model, by_source in scores.items()
    }


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "evaluate", "models", "train_3class"])
    ev, three = params.evaluate, params.train_3class.models
    files = cross_suite.model_files(paths, list(params.models), three)  # fail fast, before a long inference run
    sources = cross_suite.load_sources(paths)
    knobs = {"batch_size": ev.batch_size, "threshold": ev.threshold, "confidence": ev.confidence}
    section = {"evaluate": knobs, "train_3class": {"models": list(three)}, "models": list(files)}
    with tracking.stage_run(
        "cross_evaluate", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section
    ):
        scores, warnings = cross_suite.score_all(files, sources, three=three, root=paths.root, **knobs)
        confusion = cross_suite.confusions(scores, three)
        metrics = {"threshold": ev.threshold, "confidence": ev.confidence, "scores": scores, "confusion": confusion}
        write_json(paths.metrics / "cross_evaluate.json", metrics | {"unseen_generator": warnings})
        heatmap = paths.plots / "cross_evaluate" / "heatmap.png"
        with atomic_path(heatmap) as tmp:
            heatmap_png(*cross.cross_evaluation_matrix(scores), "Share correct per test source", str(tmp))
        inputs = [str(p.relative_to(paths.root)) for p in cross_suite.source_files(paths)]
        text = reports.cross_evaluation_text(scores, confusion, warnings, files=inputs, threshold=ev.threshold,
                                             confidence=ev.confidence)  # fmt: skip
        with atomic_path(paths.reports / "cross_evaluate.md") as tmp:
            tmp.write_text(text)
        tracking.log_metrics(mlflow_metrics(scores) | {"unseen_generator": warnings})
        tracking.log_artifacts(paths.metrics / "cross_evaluate.json", paths.reports / "cross_evaluate.md")
        tracking.log_artifacts(heatmap, artifact_path="plots")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
