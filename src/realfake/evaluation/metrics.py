"""Metrics of scored images: binary and 3-class reports with bootstrap confidence intervals, and rows for DVC plots.

Pure functions: arrays in, JSON-ready values (plain floats, ints, lists, dicts) out; no model, no files, no MLflow.
Labels: 0 = real; binary 1 = fake; 3-class 1 = sd_fake, 2 = dcgan_fake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

log = logging.getLogger(__name__)

# Bootstrap resamples are drawn in chunks of at most this many (resample, image) cells, which bounds the count
# matrices to ~16 MB each whatever the number of images and resamples.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


def binary_predictions(p_fake: np.ndarray, *, threshold: float) -> np.ndarray:
    """Labels 0 (real) / 1 (fake): an image is called fake when P(fake) >= threshold."""
    return (np.asarray(p_fake) >= threshold).astype(np.int64)


# ---- input checks --------------------------------------------------------------------------------


def _check_labels(y_true: np.ndarray, n_classes: int, n: int) -> np.ndarray:
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or len(y_true) != n:
        raise ValueError(f"y_true must be 1-D with one label per prediction ({n}), got shape {y_true.shape}")
    if n == 0:
        raise ValueError("nothing to evaluate: y_true is empty")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold integer labels 0..{n_classes - 1}")
    return y_true.astype(np.int64)


def _check_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} holds NaN or infinite values: did the model diverge?")
    return scores


def check_class_names(class_names: Sequence[str], n_classes: int) -> list[str]:
    if len(class_names) != n_classes:
        raise ValueError(f"expected {n_classes} class names, got {list(class_names)}")
    return [str(name) for name in class_names]


def _check_interval_args(n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


# ---- bootstrap -----------------------------------------------------------------------------------


def _bootstrap_counts(n: int, *, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (rows, n) int arrays: how often each of n images occurs in each resample drawn with replacement.

    A resample is fully described by these multiplicities, which lets every statistic below be a weighted sum
    over the original images instead of a copy of them.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(rows, n))
        draws += np.arange(rows)[:, None] * n  # offset each row so that one bincount counts every row
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)


def _auc_from_counts(counts: np.ndarray, is_fake: np.ndarray, group_starts: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of `counts` (image multiplicities) via the Mann-Whitney U statistic.

    Images must be sorted by score, with `group_starts` marking where each run of equal scores begins, so a
    fake-real tie counts one half, as in roc_auc_score. Rows holding only one class give NaN.
    """
    counts = counts.astype(np.float64)
    fakes = np.add.reduceat(counts * is_fake, group_starts, axis=1)  # (rows, distinct scores)
    reals = np.add.reduceat(counts * ~is_fake, group_starts, axis=1)
    reals_below = np.cumsum(reals, axis=1) - reals
    u = np.sum(fakes * (reals_below + 0.5 * reals), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (fakes.sum(axis=1) * reals.sum(axis=1))


def _percentile_interval(samples: np.ndarray, confidence: float, what: str) -> list[float] | None:
    """Percentile-method interval of bootstrap `samples`, ignoring NaN (undefined) resamples."""
    valid = samples[~np.isnan(samples)]
    if len(valid) < len(samples):
        log.warning("%s: %d of %d resamples undefined (one class only)", what, len(samples) - len(valid), len(samples))
    if len(valid) == 0:
        return None
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(valid, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _bootstrap_binary(
    y_true: np.ndarray,
    scores: np.ndarray,
    correct: np.ndarray,
    *,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict:
    # Sort once: a resample of the sorted images is distributed exactly like a resample of the originals.
    order = np.argsort(scores, kind="stable")
    sorted_scores, is_fake, correct = scores[order], y_true[order] == 1, correct[order].astype(np.float64)
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    accuracies, aucs = [], []
    for counts in _bootstrap_counts(len(scores), n_bootstrap=n_bootstrap, seed=seed):
        accuracies.append(counts @ correct / len(scores))
        aucs.append(_auc_from_counts(counts, is_fake, group_starts))
    return {
        "accuracy_ci": _percentile_interval(np.concatenate(accuracies), confidence, "accuracy"),
        "roc_auc_ci": _percentile_interval(np.concatenate(aucs), confidence, "roc_auc"),
    }


def _bootstrap_accuracy(correct: np.ndarray, *, n_bootstrap: int, confidence: float, seed: int) -> list[float]:
    correct = correct.astype(np.float64)
    samples = [
        counts @ correct / len(correct)
        for counts in _bootstrap_counts(len(correct), n_bootstrap=n_bootstrap, seed=seed)
    ]
    return _percentile_interval(np.concatenate(samples), confidence, "accuracy")


# ---- reports -------------------------------------------------------------------------------------


def _class_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Per-class precision/recall/F1/support, their macro and support-weighted means, the confusion matrix."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        }
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        metrics[f"{average}_avg"] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()  # rows = actual
    return metrics


def _roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None (JSON null) when only one class is present and the AUC is undefined."""
    if is_positive.all() or not is_positive.any():
        return None
    return float(roc_auc_score(is_positive, scores))


def binary_report(
    y_true: np.ndarray,
    p_fake: np.ndarray,
    *,
    threshold: float,
    class_names: Sequence[str],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict:
    """Metrics of a real-vs-fake classifier from its P(fake) scores, with bootstrap confidence intervals.

    Images are called fake when P(fake) >= threshold. The intervals resample images with replacement
    (`n_bootstrap` times, seeded) and take percentiles; accuracy and AUC share the resamples.
    """
    scores = _check_scores(p_fake, "p_fake")
    y_true = _check_labels(y_true, 2, len(scores))
    class_names = check_class_names(class_names, 2)
    _check_interval_args(n_bootstrap, confidence)
    y_pred = binary_predictions(scores, threshold=threshold)
    correct = y_pred == y_true
    intervals = _bootstrap_binary(y_true, scores, correct, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return {
        "n": len(y_true),
        "accuracy": float(correct.mean()),
        "accuracy_ci": intervals["accuracy_ci"],
        "roc_auc": _roc_auc(y_true == 1, scores),
        "roc_auc_ci": intervals["roc_auc_ci"],
        **_class_metrics(y_true, y_pred, class_names),
        "threshold": float(threshold),
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
    }


def multiclass_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    *,
    class_names: Sequence[str],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict:
    """Metrics of a C-class classifier (prediction = most probable class), accuracy with a bootstrap interval.

    AUC is one-vs-rest per class (that class's probability as the score) and their unweighted mean, the same
    as roc_auc_score(multi_class="ovr", average="macro"); a class absent from y_true has no AUC (null) and
    then neither has the mean.
    """
    probabilities = _check_scores(probabilities, "probabilities")
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C), got {probabilities.shape}")
    class_names = check_class_names(class_names, probabilities.shape[1])
    y_true = _check_labels(y_true, len(class_names), len(probabilities))
    _check_interval_args(n_bootstrap, confidence)
    y_pred = np.argmax(probabilities, axis=1)
    correct = y_pred == y_true
    metrics = _class_metrics(y_true, y_pred, class_names)
    aucs = [_roc_auc(y_true == k, probabilities[:, k]) for k in range(len(class_names))]
    for name, auc in zip(class_names, aucs, strict=True):
        metrics["per_class"][name]["roc_auc_ovr"] = auc
    return {
        "n": len(y_true),
        "accuracy": float(correct.mean()),
        "accuracy_ci": _bootstrap_accuracy(correct, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed),
        "roc_auc_ovr_macro": None if None in aucs else float(np.mean(aucs)),
        **metrics,
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
    }


def classification_report_text(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> str:
    """scikit-learn's text classification report (4 digits) for any number of classes."""
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(name) for name in class_names],
        digits=4,
        zero_division=0,
    )


# ---- rows for DVC plots --------------------------------------------------------------------------


def roc_points(y_true: np.ndarray, p_fake: np.ndarray, *, max_points: int) -> list[dict]:
    """The ROC curve as at most `max_points` rows {fpr, tpr, threshold}, first and last point kept.

    The first point's threshold is infinite (nothing called fake) and is written as null, which JSON allows.
    Returns [] when y_true holds one class only (no curve exists).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2 (the curve's two ends), got {max_points}")
    scores = _check_scores(p_fake, "p_fake")
    y_true = _check_labels(y_true, 2, len(scores))
    if y_true.min() == y_true.max():
        log.warning("ROC curve undefined: y_true holds one class only")
        return []
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=True)
    # Thin by point index, not by fpr: more points stay where the curve has more corners.
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return [
        {
            "fpr": float(fpr[i]),
            "tpr": float(tpr[i]),
            "threshold": float(thresholds[i]) if np.isfinite(thresholds[i]) else None,
        }
        for i in keep
    ]


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """One {actual, predicted} row of class names per image: the input of DVC's confusion plot template."""
    names = [str(name) for name in class_names]
    return [{"actual": names[a], "predicted": names[p]} for a, p in zip(y_true, y_pred, strict=True)]
