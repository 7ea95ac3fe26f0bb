"""A binary model's accuracy and ROC-AUC on the same test images, clean and under each perturbation, and its robust
accuracy: the mean accuracy over all perturbations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from realfake.data.perturb import Perturbation, perturb
from realfake.evaluation.scoring import score_binary

if TYPE_CHECKING:
    import keras

CLEAN = "none"  # the unperturbed column
KEPT = ("n", "accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci")


def perturbed_sets(images: np.ndarray, perturbations: Sequence[Perturbation], *, seed: int) -> dict[str, np.ndarray]:
    """{name: uint8 images}: the clean images first, then each perturbation of them (each its own noise stream)."""
    sets = {CLEAN: images}
    for i, perturbation in enumerate(perturbations):
        sets[perturbation.name] = perturb(images, perturbation, seed=seed + i)
    return sets


def score_sets(model: keras.Model, sets: dict[str, np.ndarray], labels: np.ndarray, *, class_names, batch_size: int,
               threshold: float, n_bootstrap: int, confidence: float, seed: int) -> dict:  # fmt: skip
    """{set name: n, accuracy, ROC-AUC and their intervals} plus `robust_accuracy` over the perturbed sets."""
    scores = {}
    for name, images in sets.items():
        _, report = score_binary(
            model, images, labels, class_names=class_names, batch_size=batch_size, threshold=threshold,
            n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
        )  # fmt: skip
        scores[name] = {k: report[k] for k in KEPT}
    perturbed = [s["accuracy"] for name, s in scores.items() if name != CLEAN]
    return {
        "clean_accuracy": scores[CLEAN]["accuracy"],
        "robust_accuracy": float(np.mean(perturbed)) if perturbed else None,
        "worst_accuracy": float(np.min(perturbed)) if perturbed else None,
        "scores": scores,
    }


def accuracy_matrix(by_model: dict[str, dict]) -> tuple[np.ndarray, list[str], list[str]]:
    """(accuracy per model row and column, models, columns): every set, then the robust accuracy."""
    models = list(by_model)
    columns = list(dict.fromkeys(name for result in by_model.values() for name in result["scores"]))
    rows = [
        [by_model[m]["scores"].get(c, {}).get("accuracy", np.nan) for c in columns] + [by_model[m]["robust_accuracy"]]
        for m in models
    ]
    return np.array(rows, dtype=np.float64), models, [*columns, "robust (mean)"]
