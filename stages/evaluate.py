"""Stage `evaluate@<model>`: score one binary model on CIFAKE's test split, clean and perturbed.

On every image of the prepared test split (real = CIFAR-10 photos, fake = Stable Diffusion): accuracy, per-class
precision/recall/F1, ROC-AUC with bootstrap intervals; calibration (ECE, Brier, reliability diagram); the false-positive
rate and recall that the thresholds stored with the model (chosen on validation) give on test; and how well the
out-of-distribution score separates CIFAKE images from resized photographs (metrics/evaluate/<model>.json).
Robustness (metrics/robustness/<model>.json): a seeded, class-balanced sample of `robustness.max_images` test images,
clean and under every perturbation in params (JPEG, down-and-up scaling, blur, noise, chains), applied alike to real
and fake images; the robust accuracy is the mean over all perturbations. Nothing here selects anything.
"""

import numpy as np

from realfake.data.perturb import Perturbation, perturb
from realfake.data.prepare import stratified_sample
from realfake.evaluation import calibration, ood, reports, thresholds
from realfake.evaluation.metrics import binary_predictions, classification_report_text, confusion_rows, roc_points
from realfake.evaluation.robustness import perturbed_sets, score_sets
from realfake.evaluation.scoring import score_binary
from realfake.fileio import atomic_path, write_json
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import model_registry, stage, tracking

OOD_SHIFTED = "downscale 2"  # a second out-of-distribution set: CIFAKE test images downscaled 2x and back


def ood_report(model, info, test, ev, seed: int) -> dict:
    """Share of test images flagged out of distribution, and the AUC of the OOD score against resized photos and
    against downscaled CIFAKE images (both positive = out of distribution)."""
    from sklearn.metrics import roc_auc_score

    size = test.images.shape[1]
    sample = test.images[stratified_sample(test.labels, count=ev.ood_photo_crops, seed=seed)]
    sets = {
        "cifake_test": test.images,
        "photo_crops": ood.photo_crops(ood.sample_photos(), count=ev.ood_photo_crops, size=size, seed=seed),
        "cifake_downscaled_2x": perturb(sample, Perturbation.parse(OOD_SHIFTED), seed=seed),
    }
    scored = {
        name: ood.scores(ood.embed(model, images, batch_size=ev.batch_size), info.ood_means, info.ood_precision)
        for name, images in sets.items()
    }
    inside = scored["cifake_test"]
    out = {"cutoff": info.ood_cutoff, "percentile": info.ood_percentile}
    for name, values in scored.items():
        out[name] = {"images": len(values), "flagged_share": float(np.mean(values > info.ood_cutoff))}
        if name != "cifake_test":
            labels = np.r_[np.zeros(len(inside)), np.ones(len(values))]
            out[name]["auc_vs_cifake_test"] = float(roc_auc_score(labels, np.r_[inside, values]))
    return out


def evaluate(model, info, test, ev, seed: int) -> tuple[dict, str, dict]:
    """(metrics, classification report text, {plot name: rows}) of `model` on `test`."""
    scores, report = score_binary(
        model, test.images, test.labels, class_names=test.class_names, batch_size=ev.batch_size,
        threshold=ev.threshold, n_bootstrap=ev.n_bootstrap, confidence=ev.confidence, seed=seed,
    )  # fmt: skip
    y_pred = binary_predictions(scores, threshold=ev.threshold)
    calibrated = calibration.calibration_report(scores, test.labels, bins=ev.calibration_bins)
    uncalibrated = calibration.apply_temperature(scores, 1.0 / info.temperature)  # undo the stored temperature
    report["calibration"] = {k: v for k, v in calibrated.items() if k != "reliability"} | {
        "temperature": info.temperature,
        "ece_uncalibrated": calibration.calibration_report(uncalibrated, test.labels, bins=ev.calibration_bins)["ece"],
    }
    report["operating_points"] = {
        name: {"max_fpr": point["max_fpr"], "val": {k: point[k] for k in ("fpr", "recall")}}
        | {"test": thresholds.at_threshold(scores, test.labels, point["threshold"])}
        for name, point in info.operating_points.items()
    }
    report["ood"] = ood_report(model, info, test, ev, seed)
    text = classification_report_text(test.labels, y_pred, test.class_names)
    plots = {
        "roc": roc_points(test.labels, scores, max_points=ev.roc_max_points),
        "confusion": confusion_rows(test.labels, y_pred, test.class_names),
        "reliability": calibrated["reliability"],
    }
    return report, text, plots


def robustness(model, test, rb, ev, seed: int) -> dict:
    """The model's robustness report on a seeded, class-balanced sample of the test split."""
    chosen = stratified_sample(test.labels, count=rb.max_images, seed=seed)
    images, labels = test.images[chosen], test.labels[chosen]
    result = score_sets(
        model, perturbed_sets(images, rb.parsed(), seed=seed), labels, class_names=test.class_names,
        batch_size=ev.batch_size, threshold=ev.threshold, n_bootstrap=ev.n_bootstrap, confidence=ev.confidence,
        seed=seed,
    )  # fmt: skip
    computed_on = f"{len(labels)} images of the CIFAKE test split (test.npz), half real, half fake"
    return {"computed_on": computed_on, "threshold": ev.threshold, "confidence": ev.confidence} | result


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
        report, text, plots = evaluate(model, info, test, params.evaluate, params.base.seed)
        report = {"model": name, "computed_on": "CIFAKE test split as prepared (test.npz)"} | report
        robust = {"model": name} | robustness(model, test, params.robustness, params.evaluate, params.base.seed)

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
