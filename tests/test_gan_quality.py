"""The DCGAN's quality measures on synthetic features: Frechet distance and diversity ratio."""

from __future__ import annotations

import numpy as np
import pytest

from realfake.evaluation import gan_quality


def features(seed: int, n: int = 400, d: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d))  # correlated, like real features


def test_frechet_distance_of_a_set_to_itself_is_zero():
    x = features(0)
    assert gan_quality.frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    assert gan_quality.frechet_distance(x, x[::-1].copy()) == pytest.approx(0, abs=1e-8)  # order does not matter


def test_frechet_distance_matches_the_closed_form_and_grows_with_a_mean_shift():
    x = features(1)
    shifts = [0.5, 1.0, 2.0, 4.0]
    distances = [gan_quality.frechet_distance(x + s, x) for s in shifts]
    # same covariance: the distance is exactly the squared mean shift, d * s**2
    np.testing.assert_allclose(distances, [x.shape[1] * s**2 for s in shifts], rtol=1e-6)
    # scaled covariance, same mean: tr(S + c^2 S - 2 c S) = (1 - c)^2 tr(S)
    cov = np.cov(x, rowvar=False)
    assert gan_quality.frechet_distance(3 * x, x) == pytest.approx(4 * np.trace(cov) + 4 * np.sum(x.mean(0) ** 2))


def test_frechet_distance_between_samples_of_one_distribution_is_small():
    real_vs_real = gan_quality.frechet_distance(features(2)[:200], features(2)[200:])
    assert real_vs_real < gan_quality.frechet_distance(features(2)[:200] + 1, features(2)[200:])


def test_collapsed_generator_has_zero_diversity_and_a_large_distance():
    real = features(3)
    collapsed = np.repeat(real[:1], len(real), axis=0)  # one image whatever the noise
    assert gan_quality.diversity_ratio(collapsed, real) == 0
    assert gan_quality.diversity_ratio(real[::-1].copy(), real) == pytest.approx(1)
    assert gan_quality.frechet_distance(collapsed, real) > 10 * gan_quality.frechet_distance(real[:200], real[200:])


def test_diversity_is_the_mean_pairwise_distance():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert gan_quality.diversity(x) == pytest.approx((5 + 10 + 5) / 3)
    with pytest.raises(ValueError, match="N >= 2"):
        gan_quality.diversity(x[:1])
    with pytest.raises(ValueError, match="dimensions"):
        gan_quality.frechet_distance(x, x[:, :1])
