"""Cross-evaluation: every model on every test source (CIFAKE real, Stable Diffusion fakes, DCGAN fakes), as the
share of each source a model gets right with a Wilson interval, and the 3-class model's confusion by source kind."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from realfake.data.threeclass import THREE_CLASSES as SOURCE_KINDS
from realfake.evaluation.metrics import check_class_names
from realfake.evaluation.scoring import predict_labels, predict_proba

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


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
    class_names = check_class_names(class_names, probabilities.shape[1])
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


def sources_of(scores: Mapping[str, Mapping[str, dict]]) -> list[str]:
    """Every source in any model's scores, in first-seen order."""
    return list(dict.fromkeys(source for by_source in scores.values() for source in by_source))


def cross_evaluation_matrix(
    scores: Mapping[str, Mapping[str, dict]], *, value: str = "share_correct"
) -> tuple[np.ndarray, list[str], list[str]]:
    """(`value` per model row and source column, model names, source names); NaN where not scored."""
    models, sources = list(scores), sources_of(scores)
    matrix = np.full((len(models), len(sources)), np.nan)
    for i, model in enumerate(models):
        for j, source in enumerate(sources):
            if source in scores[model]:
                matrix[i, j] = scores[model][source][value]
    return matrix, models, sources


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


def warning_shares(p_fake: np.ndarray, ood_scores: np.ndarray, *, threshold: float, cutoff: float) -> dict:
    """How often a detector warns on one source: called fake (P(fake) >= threshold), flagged out of distribution
    (OOD score > cutoff), and either, as shares of the source's images."""
    fake, outside = np.asarray(p_fake) >= threshold, np.asarray(ood_scores) > cutoff
    if fake.shape != outside.shape or fake.ndim != 1 or not len(fake):
        raise ValueError(f"need one P(fake) and one OOD score per image, got {fake.shape} and {outside.shape}")
    return {
        "n": len(fake),
        "share_called_fake": float(fake.mean()),
        "share_flagged_ood": float(outside.mean()),
        "share_fake_or_ood": float((fake | outside).mean()),
    }


def warnings_by_source(
    model: keras.Model,
    info,
    sources: Mapping[str, tuple[str, np.ndarray]],
    *,
    batch_size: int,
    threshold: float,
) -> dict[str, dict]:
    """A binary detector's `warning_shares` on every source, with its out-of-distribution statistics `info`
    (models.detector.DetectorInfo): whether it at least warns on a generator it never saw."""
    from realfake.evaluation import ood
    from realfake.evaluation.scoring import p_fake

    out = {}
    for name, (_, images) in sources.items():
        scores = p_fake(predict_proba(model, images, batch_size=batch_size))
        distances = ood.scores(ood.embed(model, images, batch_size=batch_size), info.ood_means, info.ood_precision)
        out[name] = warning_shares(scores, distances, threshold=threshold, cutoff=info.ood_cutoff)
    return out
