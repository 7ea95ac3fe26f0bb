"""Calibration of P(fake): a temperature fitted on validation scores, and how well probabilities match frequencies
(expected calibration error, Brier score, reliability-diagram rows).

A temperature T rescales the logit of P(fake): p' = sigmoid(logit(p) / T). T > 1 softens, T < 1 sharpens, and the
order of the scores (hence accuracy at 0.5 and the ROC curve) is unchanged. It is fitted by minimising the
negative log-likelihood on the validation split only.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logits


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p_fake: np.ndarray, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit(p_fake) / temperature))


def _nll(p_fake: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = np.clip(apply_temperature(p_fake, temperature), _EPS, 1 - _EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def fit_temperature(p_fake: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of binary `labels` (1 = fake)."""
    from scipy.optimize import minimize_scalar

    p_fake, labels = np.asarray(p_fake, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(p_fake) != len(labels) or len(labels) == 0:
        raise ValueError(f"need one label per score, got {len(labels)} labels for {len(p_fake)} scores")
    # Searched on log T: the likelihood is smooth and unimodal there, and T stays positive.
    found = minimize_scalar(
        lambda log_t: _nll(p_fake, labels, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(found.x))


def calibration_report(p_fake: np.ndarray, labels: np.ndarray, *, bins: int) -> dict:
    """Expected calibration error (top-label confidence, `bins` equal-width bins, as in Guo et al. 2017), the Brier
    score of P(fake), and the reliability rows of P(fake): per non-empty bin, its mean P(fake) and the share of fakes.
    """
    p_fake, labels = np.asarray(p_fake, dtype=np.float64), np.asarray(labels)
    if len(p_fake) != len(labels) or len(labels) == 0:
        raise ValueError(f"need one label per score, got {len(labels)} labels for {len(p_fake)} scores")
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = np.maximum(p_fake, 1 - p_fake)
    correct = (p_fake >= 0.5) == (labels == 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        chosen = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence <= hi)
        if chosen.any():
            ece += chosen.mean() * abs(correct[chosen].mean() - confidence[chosen].mean())
    rows = []
    which = np.minimum((p_fake * bins).astype(int), bins - 1)
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            rows.append(
                {
                    "bin": b,
                    "p_fake_mean": float(p_fake[chosen].mean()),
                    "fake_share": float((labels[chosen] == 1).mean()),
                    "images": int(chosen.sum()),
                }
            )
    return {
        "ece": float(ece),
        "brier": float(np.mean((p_fake - (labels == 1)) ** 2)),
        "bins": int(bins),
        "reliability": rows,
    }
