"""Operating points: the P(fake) threshold that flags at most a chosen share of real images, chosen on the
validation split, and what it gives elsewhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def point_name(max_fpr: float) -> str:
    """ "fpr_0.01" for a 1% false-positive rate: the key an operating point is stored and asked for under."""
    return f"fpr_{max_fpr:g}"


def fpr_threshold(real_scores: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold at which at most `max_fpr` of `real_scores` (P(fake) of real images) are >= it."""
    scores = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("no real images to set a threshold on")
    allowed = math.floor(max_fpr * len(scores) + 1e-9)
    if allowed >= len(scores):
        return 0.0
    return float(np.nextafter(scores[allowed], np.inf))  # just above the first real image that must pass


def at_threshold(p_fake: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """False-positive rate (share of real images flagged) and recall (share of fakes flagged) at `threshold`."""
    p_fake, labels = np.asarray(p_fake), np.asarray(labels)
    flagged = p_fake >= threshold
    reals, fakes = labels == 0, labels == 1
    return {
        "threshold": float(threshold),
        "fpr": float(flagged[reals].mean()) if reals.any() else None,
        "recall": float(flagged[fakes].mean()) if fakes.any() else None,
    }


def operating_points(p_fake: np.ndarray, labels: np.ndarray, max_fprs: Sequence[float]) -> dict[str, dict]:
    """{point_name: {max_fpr, threshold, fpr, recall}} with each threshold set on these (validation) scores."""
    p_fake, labels = np.asarray(p_fake), np.asarray(labels)
    points = {}
    for rate in max_fprs:
        threshold = fpr_threshold(p_fake[labels == 0], rate)
        points[point_name(rate)] = {"max_fpr": float(rate), **at_threshold(p_fake, labels, threshold)}
    return points
