"""Stage `evaluate@<model>`: score one binary model on CIFAKE's test split, clean and perturbed.

On every image of the prepared test split (real = CIFAR-10 photos, fake = Stable Diffusion): accuracy, per-class
precision/recall/F1, ROC-AUC with bootstrap intervals; calibration (ECE, Brier, reliability diagram); the false-positive
rate and recall that the thresholds stored with the model (chosen on validation) give on test; and how well the
out-of-distribution score separates CIFAKE images from resized photographs (metrics/evaluate/<model>.json).
Robustness (metrics/robustness/<model>.json): a seeded, class-balanced sample of `robustness.max_images` test images,
clean and under every perturbation in params (JPEG, down-and-up scaling, blur, noise, chains), applied alike to real
and fake images; the robust accuracy is the mean over all perturbations. Nothing here selects anything.
"""

from realfake.evaluation import reports
from realfake.evaluation.detector import evaluate_detector, score_robustness
from realfake.fileio import atomic_path, write_json
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import model_registry, stage, tracking


def main(paths, args) -> None:
    name = args.model
    params = load_params(args.params, sections=["base", "evaluate", "robustness"])
    logged = {"seed": params.base.seed, "evaluate": params.raw["evaluate"], "robustness": params.raw["robustness"],
              "model": name}  # fmt: skip
    with tracking.stage_run(
        "evaluate", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged,
        run_name=f"evaluate@{name}",
    ):  # fmt: skip
        test = stage.load_split(paths, "test", image_size=params.base.image_size)
        model_file = paths.model_file(name)
        model = load_model(model_file, rebuild_with=f"dvc repro train@{name}")
        info = load_info(info_path(model_file))
        report, text, plots = evaluate_detector(model, info, test, params.evaluate, params.base.seed)
        report = {"model": name, "computed_on": "CIFAKE test split as prepared (test.npz)"} | report
        robust = {"model": name} | score_robustness(model, test, params.robustness, params.evaluate, params.base.seed)

        write_json(paths.metrics / "evaluate" / f"{name}.json", report)
        write_json(paths.metrics / "robustness" / f"{name}.json", robust)
        with atomic_path(paths.reports / "evaluate" / f"{name}.txt") as tmp:
            tmp.write_text(reports.evaluation_text(name, report, text))
        for plot, rows in plots.items():
            write_json(paths.plots / "evaluate" / name / f"{plot}.json", rows)
        tracking.log_metrics(report)
        tracking.log_metrics({k: robust[k] for k in ("clean_accuracy", "robust_accuracy", "worst_accuracy")},
                             prefix="robustness.")  # fmt: skip
        per_set = {s: {"accuracy": v["accuracy"], "roc_auc": v["roc_auc"]} for s, v in robust["scores"].items()}
        tracking.log_metrics(per_set, prefix="robustness.")
        tracking.log_artifacts(
            paths.metrics / "evaluate" / f"{name}.json", paths.reports / "evaluate" / f"{name}.txt",
            paths.plots / "evaluate" / name,
        )  # fmt: skip
        tracking.log_artifacts(paths.metrics / "robustness" / f"{name}.json", artifact_path="robustness")
        headline = {"test_accuracy": report["accuracy"], "test_roc_auc": report["roc_auc"],
                    "test_ece": report["calibration"]["ece"]}  # fmt: skip
        model_registry.tag_evaluated_version(f"{params.base.registered_model_prefix}{name}", model_file, headline)


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
