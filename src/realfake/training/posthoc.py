"""After training a binary model: fit its temperature and its thresholds for chosen false-positive rates on the
validation split, and its out-of-distribution statistics on the training split (cutoff from validation).
The test split is never read here."""

from __future__ import annotations

import logging

import keras
import numpy as np

from realfake.data.prepare import Split, stratified_sample
from realfake.evaluation import calibration, ood, thresholds
from realfake.evaluation.scoring import p_fake, predict_proba
from realfake.models.detector import DetectorInfo, with_calibration
from realfake.params import DetectorParams

log = logging.getLogger(__name__)


def fit_detector(
    model: keras.Model,
    train: Split,
    val: Split,
    *,
    params: DetectorParams,
    seed: int,
) -> tuple[keras.Model, DetectorInfo, dict]:
    """(the model with its `Calibration` layer, the detector's extras, a report of what was fitted and how well)."""
    bins, batch_size = params.calibration_bins, params.batch_size
    raw = p_fake(predict_proba(model, val.images, batch_size=batch_size))
    temperature = calibration.fit_temperature(raw, val.labels) if params.calibration == "temperature" else 1.0
    scores = calibration.apply_temperature(raw, temperature)
    before = calibration.calibration_report(raw, val.labels, bins=bins)
    after = calibration.calibration_report(scores, val.labels, bins=bins)
    points = thresholds.operating_points(scores, val.labels, params.operating_fprs)

    chosen = stratified_sample(train.labels, count=params.ood_max_images, seed=seed)
    means, precision = ood.fit_statistics(
        ood.embed(model, train.images[chosen], batch_size=batch_size), train.labels[chosen]
    )
    val_ood = ood.scores(ood.embed(model, val.images, batch_size=batch_size), means, precision)
    cutoff = float(np.percentile(val_ood, params.ood_percentile))
    log.info("temperature %.3f (validation ECE %.4f -> %.4f); OOD cutoff %.1f", temperature, before["ece"],
             after["ece"], cutoff)  # fmt: skip

    fitted_on = {
        "temperature": f"validation split ({len(val.labels)} images)",
        "operating_points": f"validation split, real images ({int(np.sum(val.labels == 0))})",
        "ood_statistics": f"train split, seeded class-balanced sample ({len(chosen)} images)",
        "ood_cutoff": f"validation split, percentile {params.ood_percentile:g}",
    }
    info = DetectorInfo(
        temperature=temperature, operating_points=points, ood_means=means, ood_precision=precision,
        ood_cutoff=cutoff, ood_percentile=params.ood_percentile, fitted_on=fitted_on,
    )  # fmt: skip
    report = {
        "temperature": temperature,
        "val_ece_before": before["ece"],
        "val_ece_after": after["ece"],
        "val_brier_after": after["brier"],
        "operating_points": points,
        "ood_cutoff": cutoff,
        "ood_features": int(means.shape[1]),
        "fitted_on": fitted_on,
    }
    calibrated = with_calibration(model, temperature) if temperature != 1.0 else model
    return calibrated, info, report
