"""Scoring classifiers: batched class probabilities, binary and 3-class reports with bootstrap confidence
intervals, rows for DVC plots, and the cross-evaluation of every model against every test source.

Pure functions: arrays in, JSON-ready values (plain floats, ints, lists, dicts) out; no files, no MLflow.
Labels: 0 = real; binary 1 = fake; 3-class 1 = sd_fake, 2 = dcgan_fake. Column 0 of every model's
probabilities is P(real), so 1 - column 0 is P(fake) for the sigmoid CNN and the softmax models alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

if TYPE_CHECKING:  # importing keras pulls in TensorFlow; the metrics below do not need it
    import keras

log = logging.getLogger(__name__)

# What a test source can hold: every image in a source has one of these true kinds (index = 3-class label).
SOURCE_KINDS = ("real", "sd_fake", "dcgan_fake")

# Bootstrap resamples are drawn in chunks of at most this many (resample, image) cells, which bounds the count
# matrices to ~16 MB each whatever the number of images and resamples.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


# ---- inference -----------------------------------------------------------------------------------


def predict_proba(model: keras.Model, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images (N, H, W, 3), fed to the model one float32 batch at a time.

    A single-output sigmoid model (P(fake)) gives (N, 2) columns [1 - p, p], so every model yields class
    probabilities with P(real) in column 0.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, height, width, 3), got {images.shape}")
    if images.dtype != np.uint8:
        # Every model rescales inside itself, so inputs already scaled to [0, 1] or [-1, 1] would be scored
        # silently wrong (the original notebooks' cross-evaluation mistake).
        raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Keras traces a graph for predict_on_batch: seconds for the transfer models (EfficientNetV2B3 ~6 s on 2
    # cores), repaid only over several batches (it then runs ~3.5x faster than eager calls); one batch runs eagerly.
    one_batch = len(images) <= batch_size
    outputs = []
    for start in range(0, len(images), batch_size):
        # Cast per batch: a float32 copy of a whole test set is four times its uint8 size.
        batch = images[start : start + batch_size].astype(np.float32)
        scores = model(batch, training=False) if one_batch else model.predict_on_batch(batch)
        outputs.append(np.asarray(scores, dtype=np.float64))
    if outputs:
        probabilities = np.concatenate(outputs).reshape(len(images), -1)
    else:
        probabilities = np.zeros((0, model.output_shape[-1]))
    if probabilities.shape[1] == 1:
        p = probabilities[:, 0]
        probabilities = np.stack([1.0 - p, p], axis=1)
    log.info("scored %d images with %s: %d class columns", len(images), model.name, probabilities.shape[1])
    return probabilities


def p_fake(probabilities: np.ndarray) -> np.ndarray:
    """P(fake) per image: 1 - P(real), i.e. P(any fake kind) for a 3-class model."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {probabilities.shape}")
    return 1.0 - probabilities[:, 0]


def binary_predictions(p_fake: np.ndarray, *, threshold: float) -> np.ndarray:
    """Labels 0 (real) / 1 (fake): an image is called fake when P(fake) >= threshold."""
    return (np.asarray(p_fake) >= threshold).astype(np.int64)


def predict_labels(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """Predicted labels: thresholded P(fake) for 2-class probabilities, the argmax for more classes.

    `threshold` only applies to 2 classes; a 3-class model's decision is its most probable class.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        return binary_predictions(p_fake(probabilities), threshold=threshold)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {probabilities.shape}")
    return np.argmax(probabilities, axis=1).astype(np.int64)


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


def _check_class_names(class_names: Sequence[str], n_classes: int) -> list[str]:
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
    class_names = _check_class_names(class_names, 2)
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
    class_names = _check_class_names(class_names, probabilities.shape[1])
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


# ---- cross-evaluation ----------------------------------------------------------------------------


def wilson_interval(k: int, n: int, *, confidence: float) -> tuple[float, float]:
    """Wilson score interval for the share k/n.

    Why Wilson: it is closed form, so no resampling is needed, and unlike the normal (Wald) interval it stays
    inside [0, 1] and keeps close to its nominal coverage for shares near 0 or 1, which is where
    cross-evaluation shares sit (a model flagging 0.2% of DCGAN images as fake). Each image is one Bernoulli
    trial of a fixed model.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    share, z2 = k / n, z * z
    denominator = 1.0 + z2 / n
    centre = (share + z2 / (2.0 * n)) / denominator
    half_width = z * math.sqrt(share * (1.0 - share) / n + z2 / (4.0 * n * n)) / denominator
    # At k = 0 (k = n) the bound is exactly 0 (1); set it so float rounding cannot leave 1e-17 behind.
    lo = 0.0 if k == 0 else centre - half_width
    hi = 1.0 if k == n else centre + half_width
    return lo, hi


def source_score(
    predictions: np.ndarray,
    *,
    true_kind: str,
    class_names: Sequence[str],
    threshold: float,
    confidence: float,
) -> dict:
    """How one model did on one test source, all of whose images are of kind `true_kind` (see SOURCE_KINDS).

    predictions: P(fake) (N,) or class probabilities (N, C) as predict_proba returns them.
    Two classes (real, fake): an image is correct when a real one gets P(fake) < threshold or a fake one of
    any kind gets P(fake) >= threshold. More classes: the prediction is the most probable class (threshold
    unused) and correct means exactly `true_kind`. In both, an image is flagged fake when predicted as any
    non-real class.
    """
    if true_kind not in SOURCE_KINDS:
        raise ValueError(f"true_kind must be one of {SOURCE_KINDS}, got {true_kind!r}")
    probabilities = np.asarray(predictions, dtype=np.float64)
    if probabilities.ndim == 1:
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    y_pred = predict_labels(probabilities, threshold=threshold)
    class_names = _check_class_names(class_names, probabilities.shape[1])
    n = len(y_pred)
    if n == 0:
        raise ValueError(f"source of kind {true_kind!r} holds no images")
    if len(class_names) == 2:
        true_label = 0 if true_kind == SOURCE_KINDS[0] else 1
    elif true_kind in class_names:
        true_label = class_names.index(true_kind)
    else:
        raise ValueError(f"true_kind {true_kind!r} is not one of the model's classes {class_names}")
    predicted = np.bincount(y_pred, minlength=len(class_names))
    n_correct = int(predicted[true_label])
    return {
        "true_kind": true_kind,
        "n": n,
        "n_correct": n_correct,
        "share_correct": n_correct / n,
        "ci": list(wilson_interval(n_correct, n, confidence=confidence)),
        "predicted_counts": {name: int(count) for name, count in zip(class_names, predicted, strict=True)},
        "share_flagged_fake": float((n - predicted[0]) / n),
    }


def _sources(scores: Mapping[str, Mapping[str, dict]]) -> list[str]:
    """Every source in any model's scores, in first-seen order."""
    return list(dict.fromkeys(source for by_source in scores.values() for source in by_source))


def cross_evaluation_matrix(
    scores: Mapping[str, Mapping[str, dict]], *, value: str = "share_correct"
) -> tuple[np.ndarray, list[str], list[str]]:
    """(`value` per model row and source column, model names, source names); NaN where not scored."""
    models, sources = list(scores), _sources(scores)
    matrix = np.full((len(models), len(sources)), np.nan)
    for i, model in enumerate(models):
        for j, source in enumerate(sources):
            if source in scores[model]:
                matrix[i, j] = scores[model][source][value]
    return matrix, models, sources


def format_share(score: Mapping) -> str:
    """A source score as "0.943 [0.93, 0.95] (n=5000)": share correct, its interval, the number of images."""
    lo, hi = score["ci"]
    return f"{score['share_correct']:.3f} [{lo:.2f}, {hi:.2f}] (n={score['n']})"


def _markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    def row(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(cell).replace("|", r"\|") for cell in cells) + " |"

    return "\n".join([row(header), "|" + "---|" * len(header), *(row(cells) for cells in rows)]) + "\n"


def cross_evaluation_table(scores: Mapping[str, Mapping[str, dict]]) -> str:
    """Markdown table of the share correct: a row per model, a column per test source ("n/a": not scored)."""
    sources = _sources(scores)
    rows = [
        [model, *(format_share(by_source[s]) if s in by_source else "n/a" for s in sources)]
        for model, by_source in scores.items()
    ]
    return _markdown_table(["model", *sources], rows)


def cross_evaluate_model(
    model: keras.Model,
    sources: Mapping[str, tuple[str, np.ndarray]],
    *,
    class_names: Sequence[str],
    batch_size: int,
    threshold: float,
    confidence: float,
) -> dict[str, dict]:
    """Score one model on every test source: {source name: source_score(...)}.

    sources: source name -> (its true kind, one of SOURCE_KINDS; its uint8 images (N, H, W, 3)), each
    predicted `batch_size` images at a time. class_names: the model's classes, two (real, fake) for a
    binary model (sigmoid or 2-way softmax), SOURCE_KINDS for the 3-class one.
    """
    scores = {}
    for name, (kind, images) in sources.items():
        probabilities = predict_proba(model, images, batch_size=batch_size)
        if probabilities.shape[1] != len(class_names):
            raise ValueError(
                f"model {model.name!r} gives {probabilities.shape[1]} class columns, "
                f"expected {len(class_names)} ({', '.join(map(str, class_names))})"
            )
        scores[name] = source_score(
            probabilities, true_kind=kind, class_names=class_names, threshold=threshold, confidence=confidence
        )
        log.info("%s on %s: %d of %d correct", model.name, name, scores[name]["n_correct"], scores[name]["n"])
    return scores


def confusion_by_kind(scores: Mapping[str, dict], *, class_names: Sequence[str]) -> list[list[int]]:
    """One model's confusion matrix over its sources: rows = true kind, columns = predicted class.

    Both axes follow `class_names`; sources of the same kind add up, a kind with no source is a row of zeros.
    Every source's kind must be one of the model's classes, so this is for the 3-class model.
    """
    names = [str(name) for name in class_names]
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for source, score in scores.items():
        if score["true_kind"] not in names:
            raise ValueError(f"source {source!r} holds {score['true_kind']!r}, not one of the classes {names}")
        matrix[names.index(score["true_kind"])] += [score["predicted_counts"][name] for name in names]
    return matrix.tolist()


def confusion_table(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Markdown confusion matrix: a row per actual class, a column per predicted class."""
    names = [str(name) for name in class_names]
    rows = [[f"actual {name}", *counts] for name, counts in zip(names, matrix, strict=True)]
    return _markdown_table(["", *(f"predicted {name}" for name in names)], rows)
