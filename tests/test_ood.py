"""Out-of-distribution scores (realfake.evaluation.ood): Mahalanobis statistics, features through test-time views,
and the photo crops the score is measured against."""

import numpy as np
import pytest
from PIL import Image

from realfake.data.images import fit
from realfake.evaluation import ood
from realfake.models.detector import with_calibration
from realfake.models.fast import build_fast
from realfake.models.saving import load_model, save_model


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, true means): two classes in 6 dimensions, the same correlated noise whatever the seed."""
    mix = np.random.default_rng(100).normal(0, 1, (6, 6)) * 0.3 + np.eye(6)
    means = np.array([[0.0, 0, 0, 0, 0, 0], [4.0, 4, 0, 0, 0, 0]])
    labels = np.arange(n) % 2
    return means[labels] + np.random.default_rng(seed).normal(0, 1, (n, 6)) @ mix, labels, means


def test_fit_statistics_gives_class_means_and_an_inverse_covariance():
    features, labels, true_means = clusters(4000, seed=0)
    means, precision = ood.fit_statistics(features, labels)
    assert means.dtype == precision.dtype == np.float32
    assert means.shape == (2, 6) and precision.shape == (6, 6)
    np.testing.assert_allclose(means, [features[labels == c].mean(axis=0) for c in (0, 1)], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(means, true_means, atol=0.1)
    np.testing.assert_allclose(precision, precision.T, atol=1e-4)  # symmetric
    assert np.linalg.eigvalsh(precision.astype(np.float64)).min() > 0  # positive definite


def test_scores_are_the_squared_distance_to_the_nearest_class_mean():
    means = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    points = np.array([[0.0, 0.0], [1.0, 2.0], [9.0, 0.0], [5.0, 0.0], [0.0, -3.0]])
    np.testing.assert_allclose(ood.scores(points, means, np.eye(2, dtype=np.float32)), [0, 5, 1, 25, 9])
    # a precision of diag(1, 4) counts the second axis twice as far (squared: four times)
    precision = np.diag([1.0, 4.0]).astype(np.float32)
    np.testing.assert_allclose(ood.scores(points, means, precision), [0, 17, 1, 25, 36])


def test_points_far_from_the_training_features_score_higher():
    features, labels, true_means = clusters(2000, seed=1)
    means, precision = ood.fit_statistics(features, labels)
    held_out, _, _ = clusters(500, seed=2)  # new draws from the same distribution
    rng = np.random.default_rng(3)
    directions = rng.normal(0, 1, (200, 6))
    far = true_means[np.arange(200) % 2] + 12 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    inside, outside = ood.scores(held_out, means, precision), ood.scores(far, means, precision)
    assert outside.min() > np.percentile(inside, 99)
    # A cutoff set at a percentile of in-distribution scores (as the train stage does on validation) passes about
    # that share of new in-distribution points and flags every far one.
    cutoff = np.percentile(ood.scores(features, means, precision), 95)
    assert 0.9 < np.mean(inside <= cutoff) < 0.99 and np.all(outside > cutoff)
    assert ood.scores(true_means, means, precision) == pytest.approx([0, 0], abs=0.1)  # a class mean is home


def test_the_spread_of_the_training_features_sets_the_distance():
    # Wide along the first axis (sigma 5), narrow along the second (sigma 0.5): the same step is near along the
    # first and far across the second.
    rng = np.random.default_rng(5)
    features = rng.normal(0, 1, (3000, 2)) * [5.0, 0.5]
    means, precision = ood.fit_statistics(features, np.zeros(3000, np.int64))
    along, across = ood.scores(np.array([[5.0, 0.0], [0.0, 5.0]]), means, precision)
    assert along == pytest.approx(1, rel=0.1) and across == pytest.approx(100, rel=0.1)


# ---- features ------------------------------------------------------------------------------------


def tiny_fast(flip_tta: bool, seed: int = 0):
    return build_fast(input_shape=(32, 32, 3), stage_filters=(4, 8), convs_per_stage=1, space_to_depth=1, dropout=0.5,
                      flip_tta=flip_tta, tta_max_shift=0, seed=seed)  # fmt: skip


@pytest.fixture(scope="module")
def fast_pair():
    """A fast model with flip TTA and the same network without it (the same weights: TTA layers have none)."""
    with_tta = tiny_fast(flip_tta=True)
    plain = tiny_fast(flip_tta=False, seed=1)
    plain.set_weights(with_tta.get_weights())
    return with_tta, plain


IMAGES = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


def test_feature_layer_is_the_last_dense_layer(fast_pair):
    with_tta, _ = fast_pair
    assert ood.feature_layer(with_tta).name == "p_fake"
    import keras

    no_dense = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()], name="gap")
    with pytest.raises(ValueError, match="model 'gap' has no Dense layer"):
        ood.feature_layer(no_dense)


def test_embed_without_tta_is_the_input_of_the_last_dense_layer(fast_pair):
    _, plain = fast_pair
    features = ood.embed(plain, IMAGES, batch_size=2)
    assert features.shape == (5, 8) and features.dtype == np.float64
    # The dense layer's input at inference: global average pooling of the last ReLU (dropout is off).
    relu = plain.get_layer("relu2_1")
    import keras

    maps = keras.Model(plain.inputs[0], relu.output)(IMAGES.astype(np.float32), training=False)
    np.testing.assert_allclose(features, np.asarray(maps).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_embed_averages_over_the_flip_tta_views(fast_pair):
    with_tta, plain = fast_pair
    own = ood.embed(plain, IMAGES, batch_size=2)
    mirrored = ood.embed(plain, IMAGES[:, :, ::-1].copy(), batch_size=2)
    assert not np.allclose(own, mirrored, atol=1e-4)  # the mirror image has other features: averaging shows
    for batch_size in (2, 5):  # batches of 2, 2, 1 and one batch: each batch's views are averaged on their own
        features = ood.embed(with_tta, IMAGES, batch_size=batch_size)
        assert features.shape == (5, 8)
        np.testing.assert_allclose(features, (own + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_embed_reads_a_saved_calibrated_detector_like_the_bare_model(fast_pair, tmp_path):
    with_tta, _ = fast_pair
    save_model(with_calibration(with_tta, 2.0), tmp_path / "fast.keras")
    loaded = load_model(tmp_path / "fast.keras", rebuild_with="x")
    np.testing.assert_allclose(
        ood.embed(loaded, IMAGES, batch_size=4), ood.embed(with_tta, IMAGES, batch_size=4), rtol=1e-5, atol=1e-6
    )


# ---- photo crops ---------------------------------------------------------------------------------


def test_photo_crops_are_seeded_uint8_model_inputs():
    photos = ood.sample_photos()
    assert len(photos) >= 4 and all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    crops = ood.photo_crops(photos, count=6, size=32, seed=0)
    assert crops.dtype == np.uint8 and crops.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(crops, ood.photo_crops(photos, count=6, size=32, seed=0))
    assert not np.array_equal(crops, ood.photo_crops(photos, count=6, size=32, seed=1))
    assert len({crop.tobytes() for crop in crops}) == 6  # six different crops


def test_photo_crops_are_resized_as_predict_resizes():
    # A photo twice the model's side leaves one possible crop (the smallest side is 2x): the whole photo.
    photo = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    crops = ood.photo_crops([photo], count=2, size=32, seed=0)
    expected = np.asarray(fit(Image.fromarray(photo), (32, 32)))
    np.testing.assert_array_equal(crops[0], expected)
    np.testing.assert_array_equal(crops[1], expected)
