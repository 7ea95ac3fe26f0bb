"""Evaluating a detector on a labelled test split: the binary report with intervals, calibration, what the stored
operating points give, and how well its out-of-distribution score separates the split from resized photographs and
downscaled images; plus the rows of its DVC plots. Pure: arrays and models in, JSON-ready values out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from realfake.data.perturb import Perturbation, perturb
from realfake.data.prepare import Split, stratified_sample
from realfake.evaluation import calibration, ood, thresholds
from realfake.evaluation.metrics import binary_predictions, classification_report_text, confusion_rows, roc_points
from realfake.evaluation.robustness import perturbed_sets, score_sets
from realfake.evaluation.scoring import score_binary
from realfake.models.detector import DetectorInfo

OOD_SHIFTED = "downscale 2"  # a second out-of-distribution set: CIFAKE test images downscaled 2x and back

if TYPE_CHECKING:
    import keras

    from realfake.params import EvaluateParams, RobustnessParams


def ood_report(model: keras.Model, info: DetectorInfo, test: Split, ev: EvaluateParams, seed: int) -> dict:
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


def evaluate_detector(
    model: keras.Model, info: DetectorInfo, test: Split, ev: EvaluateParams, seed: int
) -> tuple[dict, str, dict]:
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


def score_robustness(model: keras.Model, test: Split, rb: RobustnessParams, ev: EvaluateParams, seed: int) -> dict:
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
