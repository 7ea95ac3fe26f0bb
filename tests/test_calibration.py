"""Calibration (temperature, ECE, Brier), the `Calibration` layer a detector carries, and operating points."""

import math

import keras
import numpy as np
import pytest

from realfake.evaluation import calibration, thresholds
from realfake.models.detector import with_calibration
from realfake.models.fast import build_fast
from realfake.models.layers import Calibration
from realfake.models.saving import load_model, save_model


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def labelled_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn with P(fake) = sigmoid(z): sigmoid(z) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    return z, (rng.random(n) < sigmoid(z)).astype(np.int64)


# ---- temperature ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [2.5, 0.5])
def test_fit_temperature_recovers_a_known_temperature(temperature):
    # Scores sigmoid(z * T): over-confident for T > 1, under-confident for T < 1; dividing their logit by T
    # gives back the calibrated sigmoid(z), so the likelihood is best near T.
    z, labels = labelled_logits(20_000, seed=0)
    fitted = calibration.fit_temperature(sigmoid(z * temperature), labels)
    assert fitted == pytest.approx(temperature, rel=0.05)
    assert calibration.fit_temperature(sigmoid(z), labels) == pytest.approx(1.0, rel=0.05)


def test_fit_temperature_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one label per score"):
        calibration.fit_temperature(np.array([0.2, 0.7]), np.array([1]))
    with pytest.raises(ValueError, match="one label per score"):
        calibration.fit_temperature(np.array([]), np.array([]))


def test_apply_temperature_keeps_the_order_and_the_middle():
    rng = np.random.default_rng(1)
    p = np.sort(rng.uniform(0.001, 0.999, 500))
    for temperature in (0.3, 0.8, 1.7, 4.0):
        q = calibration.apply_temperature(p, temperature)
        assert np.all(np.diff(q) > 0)  # strictly increasing as p is: the same order, the same ROC curve
        assert np.array_equal(q >= 0.5, p >= 0.5)  # and the same calls at 0.5
        softer = np.abs(q - 0.5) < np.abs(p - 0.5)
        assert softer.all() if temperature > 1 else not softer.any()
    np.testing.assert_allclose(calibration.apply_temperature(p, 1.0), p, rtol=1e-12)
    assert calibration.apply_temperature(np.array([0.8]), 2.0)[0] == pytest.approx(2 / 3)  # sqrt(4) : 1


# ---- calibration report --------------------------------------------------------------------------

# 40 images in three groups whose share of right calls equals their confidence max(p, 1 - p):
#   p = 0.3 (10 images: 3 fakes, 7 reals)  called real, confidence 0.7, 7 of 10 right
#   p = 0.8 (10 images: 8 fakes, 2 reals)  called fake, confidence 0.8, 8 of 10 right
#   p = 0.95 (20 images: 19 fakes, 1 real) called fake, confidence 0.95, 19 of 20 right
CAL_P = np.repeat([0.3, 0.8, 0.95], [10, 10, 20])
CAL_Y = np.concatenate([[1] * 3 + [0] * 7, [1] * 8 + [0] * 2, [1] * 19 + [0] * 1])


def test_calibration_report_of_perfectly_calibrated_bins():
    report = calibration.calibration_report(CAL_P, CAL_Y, bins=10)
    assert report["ece"] == pytest.approx(0.0, abs=1e-12)
    # Brier by hand: (3 * 0.7^2 + 7 * 0.3^2) + (8 * 0.2^2 + 2 * 0.8^2) + (19 * 0.05^2 + 0.95^2), over 40 images
    brier = ((1.47 + 0.63) + (0.32 + 1.28) + (0.0475 + 0.9025)) / 40
    assert report["brier"] == pytest.approx(brier) == pytest.approx(0.11625)
    assert report["bins"] == 10
    assert report["reliability"] == [
        {"bin": 3, "p_fake_mean": pytest.approx(0.3), "fake_share": pytest.approx(0.3), "images": 10},
        {"bin": 8, "p_fake_mean": pytest.approx(0.8), "fake_share": pytest.approx(0.8), "images": 10},
        {"bin": 9, "p_fake_mean": pytest.approx(0.95), "fake_share": pytest.approx(0.95), "images": 20},
    ]


def test_calibration_report_of_over_confident_scores():
    # p = 0.9 on 10 images, half of them fake: confidence 0.9, half right -> ECE |0.5 - 0.9| = 0.4.
    # Brier: 5 * 0.1^2 + 5 * 0.9^2 over 10 = 0.41.
    report = calibration.calibration_report(np.full(10, 0.9), np.arange(10) % 2, bins=15)
    assert report["ece"] == pytest.approx(0.4) and report["brier"] == pytest.approx(0.41)
    # Mixing in the calibrated groups weighs each bin by its share of the images: 10 of 50 images off by 0.4.
    mixed = calibration.calibration_report(np.r_[CAL_P, np.full(10, 0.9)], np.r_[CAL_Y, np.arange(10) % 2], bins=10)
    assert mixed["ece"] == pytest.approx(10 / 50 * 0.4)


def test_temperature_lowers_the_calibration_error_of_over_confident_scores():
    z, labels = labelled_logits(5000, seed=2)
    over = sigmoid(3 * z)
    fitted = calibration.apply_temperature(over, calibration.fit_temperature(over, labels))
    before = calibration.calibration_report(over, labels, bins=15)
    after = calibration.calibration_report(fitted, labels, bins=15)
    assert after["ece"] < 0.5 * before["ece"] and after["brier"] < before["brier"]


# ---- the Calibration layer -----------------------------------------------------------------------

P_LAYER = np.linspace(0.001, 0.999, 101)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_calibration_layer_equals_apply_temperature_on_one_and_two_columns(temperature):
    expected = calibration.apply_temperature(P_LAYER, temperature)
    layer = Calibration(temperature)
    one = np.asarray(layer(P_LAYER[:, None].astype(np.float32)))
    assert one.shape == (101, 1)
    np.testing.assert_allclose(one[:, 0], expected, atol=2e-6)
    two = np.asarray(layer(np.stack([1 - P_LAYER, P_LAYER], axis=1).astype(np.float32)))
    assert two.shape == (101, 2)
    np.testing.assert_allclose(two, np.stack([1 - expected, expected], axis=1), atol=2e-6)


def tiny_fast() -> keras.Model:
    return build_fast(input_shape=(32, 32, 3), stage_filters=(4, 8), convs_per_stage=1, space_to_depth=1, dropout=0.0,
                      flip_tta=True, tta_max_shift=0, seed=0)  # fmt: skip


def test_with_calibration_keeps_the_name_and_survives_save_and_load_in_safe_mode(tmp_path):
    model = tiny_fast()
    calibrated = with_calibration(model, 2.0)
    assert calibrated.name == model.name == "fast"
    assert isinstance(calibrated.layers[-1], Calibration) and calibrated.layers[-1].temperature == 2.0
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    raw = np.asarray(model(images, training=False), dtype=np.float64)[:, 0]
    out = np.asarray(calibrated(images, training=False), dtype=np.float64)[:, 0]
    np.testing.assert_allclose(out, calibration.apply_temperature(raw, 2.0), atol=2e-6)
    assert not np.allclose(out, raw, atol=1e-4)  # the temperature does act on these outputs

    save_model(calibrated, tmp_path / "fast.keras")
    for loaded in (
        load_model(tmp_path / "fast.keras", rebuild_with="x"),
        keras.models.load_model(tmp_path / "fast.keras", compile=False, safe_mode=True),
    ):
        assert loaded.name == "fast"
        assert isinstance(loaded.layers[-1], Calibration) and loaded.layers[-1].temperature == 2.0
        np.testing.assert_allclose(np.asarray(loaded(images, training=False))[:, 0], out, rtol=1e-5, atol=1e-6)


# ---- operating points ----------------------------------------------------------------------------


def test_fpr_threshold_by_hand():
    reals = np.linspace(0.1, 1.0, 10)  # 0.1, 0.2, ..., 1.0
    threshold = thresholds.fpr_threshold(reals, 0.2)  # two of ten may be flagged: 1.0 and 0.9
    assert 0.8 < threshold <= 0.9 and threshold == np.nextafter(0.8, 1)
    assert thresholds.fpr_threshold(reals, 0.0) > 1.0  # none flagged
    assert thresholds.fpr_threshold(reals, 1.0) == 0.0  # all flagged
    with pytest.raises(ValueError, match="no real images"):
        thresholds.fpr_threshold(np.array([]), 0.1)


def test_fpr_threshold_flags_at_most_the_rate_and_is_the_lowest_that_does():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        reals = rng.random(n)
        if rng.random() < 0.5:  # many ties
            reals = np.round(reals, int(rng.integers(0, 3)))
        rate = float(rng.choice([0.001, 0.01, 0.05, 0.1, 0.5, rng.random()]))
        threshold = thresholds.fpr_threshold(reals, rate)
        flagged = np.mean(reals >= threshold)
        assert flagged <= rate + 1e-12, (n, rate, threshold)
        if threshold > 0:  # any lower threshold flags too many
            assert np.mean(reals >= np.nextafter(threshold, -np.inf)) > rate, (n, rate, threshold)


def test_operating_points_are_named_by_rate_and_set_on_the_real_images():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 500)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    points = thresholds.operating_points(scores, labels, [0.01, 0.05])
    assert list(points) == ["fpr_0.01", "fpr_0.05"] == [thresholds.point_name(r) for r in (0.01, 0.05)]
    for rate, point in zip((0.01, 0.05), points.values(), strict=True):
        assert point["max_fpr"] == rate and point["fpr"] <= rate
        assert point["threshold"] == thresholds.fpr_threshold(scores[labels == 0], rate)
        assert point["recall"] == pytest.approx(np.mean(scores[labels == 1] >= point["threshold"]))
    assert points["fpr_0.01"]["threshold"] > points["fpr_0.05"]["threshold"]
    assert points["fpr_0.01"]["recall"] <= points["fpr_0.05"]["recall"]
    assert thresholds.point_name(0.1) == "fpr_0.1" and thresholds.point_name(0.001) == "fpr_0.001"


def test_at_threshold_counts_by_hand():
    p, y = np.array([0.1, 0.6, 0.7, 0.4, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1])
    assert thresholds.at_threshold(p, y, 0.6) == {"threshold": 0.6, "fpr": 2 / 3, "recall": 2 / 3}
    assert thresholds.at_threshold(p[:3], y[:3], 0.5)["recall"] is None
    assert math.isclose(thresholds.at_threshold(p[3:], y[3:], 0.5)["recall"], 2 / 3)
