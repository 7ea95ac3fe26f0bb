"""How close a generator's images come to real ones, measured on feature vectors (pure NumPy, no model, no I/O).

`frechet_distance` is the distance of the Fréchet Inception Distance (Heusel et al. 2017) between two Gaussians fitted
to two sets of features: ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The caller chooses the feature space
(here a trained detector's penultimate layer, so no Inception weights need downloading); values are comparable only
within one feature space and one set size. `diversity` is the mean pairwise Euclidean distance within a set: a
collapsed generator, making one image whatever the noise, scores 0.
"""

from __future__ import annotations

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, d) features, N >= 2, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features: expected (N >= 2, d), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, d) and b (M, d); 0 for identical sets.

    tr((S_a S_b)^(1/2)) = tr((R S_b R)^(1/2)) with R = S_a^(1/2): the product R S_b R is symmetric, so both square
    roots come from `eigh` and the result stays real.
    """
    mean_a, cov_a = gaussian(a)
    mean_b, cov_b = gaussian(b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"features: {mean_a.shape[0]} vs {mean_b.shape[0]} dimensions")
    root_a = _sqrt_psd(cov_a)
    cross = np.trace(_sqrt_psd(root_a @ cov_b @ root_a))
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(distance, 0.0))  # round-off can leave a tiny negative for identical sets


def diversity(features: np.ndarray) -> float:
    """Mean Euclidean distance between the features of distinct pairs of a set (N, d), N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features: expected (N >= 2, d), got {x.shape}")
    x = x - x.mean(axis=0)  # distances do not change; the Gram-matrix formula below loses less precision
    squared = np.sum(x**2, axis=1)
    d2 = np.clip(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0, None)
    n = len(x)
    return float(np.sqrt(d2)[np.triu_indices(n, k=1)].mean())


def diversity_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """diversity(generated) / diversity(real): about 1 for a generator as varied as the data, 0 for a collapsed one."""
    return diversity(generated) / diversity(real)
