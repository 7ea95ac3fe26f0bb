"""Image degradations (realfake.data.perturb): random ones for training, fixed ones for the robustness evaluation, and
both input pipelines applying them (realfake.training.inputs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from realfake.data import perturb
from realfake.data.perturb import Degradation, Perturbation, Step, degrade_batch
from realfake.params import load_params
from realfake.training.inputs import ArrayBatches, Batches

NONE_AT_ALL = {"jpeg": (30, 95), "downscale": (1.5, 3.0), "blur": (0.5, 1.5), "noise": (2.0, 8.0)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Smooth random images (noise would be an unfair JPEG test): a random colour gradient plus mild noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 32)
    base = rng.uniform(0, 255, (24, 1, 1, 3)) * ramp[None, :, None, None] + rng.uniform(0, 128, (24, 1, 1, 3))
    pixels = base + ramp[None, None, :, None] * 60 + rng.normal(0, 6, (24, 32, 32, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def robust_degrade() -> tuple[Degradation, ...]:
    """The degradations models.fast_robust trains with (params.yaml)."""
    spec = load_params(REPO / "params.yaml", sections=["models.fast_robust"]).models["fast_robust"]
    assert spec.degrade, "models.fast_robust lists no degradations"
    return spec.degrade


def pillow_jpeg(image: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buffer).convert("RGB"))


# ----------------------------------------------------------------------------- degrade_batch


def test_degrade_batch_is_a_pure_function_of_the_generator_state(images, robust_degrade):
    original = images.copy()
    first = degrade_batch(images, robust_degrade, np.random.default_rng(3))
    np.random.seed(99)  # NumPy's global state plays no part
    again = degrade_batch(images, robust_degrade, np.random.default_rng(3))
    other = degrade_batch(images, robust_degrade, np.random.default_rng(4))
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(again, first)
    assert not np.array_equal(other, first)
    np.testing.assert_array_equal(images, original)  # a new array: the input is left alone
    changed = np.any(first != images, axis=(1, 2, 3))
    assert 0 < changed.sum() < len(images)  # each degradation applies with its probability, not to all or none


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_probability_zero_changes_nothing(images, kind):
    out = degrade_batch(images, [Degradation(kind, 0.0, NONE_AT_ALL[kind])], np.random.default_rng(0))
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_probability_one_changes_every_image(images, kind):
    out = degrade_batch(images, [Degradation(kind, 1.0, NONE_AT_ALL[kind])], np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.all(np.any(out != images, axis=(1, 2, 3)))


def test_probability_one_jpeg_is_pillows_jpeg_with_420_subsampling(images):
    out = degrade_batch(images, [Degradation("jpeg", 1.0, (50, 50))], np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.stack([perturb.jpeg_image(image, 50) for image in images]))
    np.testing.assert_array_equal(out[0], pillow_jpeg(images[0], 50, "4:2:0"))
    assert not np.array_equal(out[0], pillow_jpeg(images[0], 50, "4:4:4"))  # the comparison can tell them apart


def test_jpeg_quality_is_a_whole_number_drawn_from_the_range(images):
    out = degrade_batch(images[:8], [Degradation("jpeg", 1.0, (30, 90))], np.random.default_rng(1))
    qualities = []
    for image, degraded in zip(images[:8], out, strict=True):
        found = [q for q in range(30, 91) if np.array_equal(perturb.jpeg_image(image, q), degraded)]
        assert found, "not a Pillow JPEG of any quality in 30..90"
        qualities.append(found[0])
    assert len(set(qualities)) > 1


def test_a_bad_degradation_is_refused():
    for bad, message in [
        (Degradation("jpeg", -0.1, (30, 90)), "probability"),
        (Degradation("jpeg", 0.5, (90, 30)), "low <= high"),
        (Degradation("jpeg", 0.5, (30,)), r"\[low, high\]"),
        (Degradation("downscale", 0.5, (0.5, 2)), "factor must be >= 1"),
        (Degradation("blur", 0.5, (-1, 2)), "sigma must be >= 0"),
        (Degradation("sharpen", 0.5, (1, 2)), "unknown kind 'sharpen'"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad.check()


# ----------------------------------------------------------------------------- fixed perturbations


def test_a_chain_parses_into_ordered_steps_and_applies_in_order(images):
    chain = Perturbation.parse("downscale 2 + jpeg 75")
    assert chain.steps == (Step("downscale", 2.0), Step("jpeg", 75.0))
    assert chain.name == "downscale_2+jpeg_75" and chain.text == "downscale 2 + jpeg 75"
    assert Perturbation.parse(chain.text) == chain
    assert Perturbation.parse("  blur   0.5 ").name == "blur_0.5"
    out = perturb.perturb(images[:4], chain, seed=0)
    expected = [perturb.jpeg_image(perturb.downscale_image(image, 2.0), 75) for image in images[:4]]
    np.testing.assert_array_equal(out, np.stack(expected))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "kind strength"),
        ("jpeg", "kind strength"),
        ("jpeg 75 90", "kind strength"),
        ("jpeg 75 +", "kind strength"),
        ("jpeg high", "'high' is not a number"),
        ("jpeg 0", "1..95"),
        ("jpeg 96", "1..95"),
        ("jpeg 75.5", "whole number"),
        ("downscale 0.5", ">= 1"),
        ("noise -2", ">= 0"),
        ("sharpen 2", "unknown kind 'sharpen'"),
    ],
)
def test_bad_perturbation_strings_raise_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        Perturbation.parse(text)


# ----------------------------------------------------------------------------- both input pipelines


def tf_batches(spec: Batches, first: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in spec.epochs(first, stop)]


def numpy_batches(spec: Batches, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    ds = ArrayBatches(spec)
    ds.set_epoch(epoch)
    return [ds[i] for i in reversed(range(len(ds)))][::-1]  # fetched last to first: the order must not matter


def assert_same(batches, others) -> None:
    assert len(batches) == len(others)
    for (x, y), (x_other, y_other) in zip(batches, others, strict=True):
        np.testing.assert_array_equal(x_other, x)
        np.testing.assert_array_equal(y_other, y)


def settings(**overrides) -> dict:
    return dict(batch_size=8, seed=1, shuffle=True, augment=("hflip",), max_shift=1) | overrides


def test_tf_data_batches_are_degraded_the_same_for_the_same_seed_epoch_and_step(images, robust_degrade):
    labels = np.arange(len(images)) % 2
    spec = Batches(images, labels, **settings(degrade=robust_degrade))
    both = tf_batches(spec, 0, 2)
    assert_same(tf_batches(spec, 0, 2), both)  # the same batches every time
    assert_same(tf_batches(spec, 1, 2), both[spec.steps_per_epoch :])  # epoch 1 alone: what a resume sees
    plain = tf_batches(Batches(images, labels, **settings()), 0, 2)
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in both]  # same order and transforms ...
    x, x_plain = np.concatenate([x for x, _ in both]), np.concatenate([x for x, _ in plain])
    changed = np.any(x != x_plain, axis=(1, 2, 3))
    assert 0 < changed.sum() < len(changed)  # ... and some images, not all, degraded
    other_seed = tf_batches(Batches(images, labels, **settings(degrade=robust_degrade, seed=2)), 0, 2)
    assert not np.array_equal(np.concatenate([x for x, _ in other_seed]), x)


def test_numpy_batches_are_degraded_the_same_for_the_same_seed_epoch_and_step(images, robust_degrade):
    labels = np.arange(len(images)) % 2
    spec = Batches(images, labels, **settings(degrade=robust_degrade))
    twin = Batches(images, labels, **settings(degrade=robust_degrade))  # another instance, same settings
    for epoch in range(2):
        assert_same(numpy_batches(twin, epoch), numpy_batches(spec, epoch))
    plain = np.concatenate([x for x, _ in numpy_batches(Batches(images, labels, **settings()), 0)])
    x = np.concatenate([x for x, _ in numpy_batches(spec, 0)])
    changed = np.any(x != plain, axis=(1, 2, 3))
    assert 0 < changed.sum() < len(changed)


def test_both_pipelines_degrade_unshuffled_batches_alike(images):
    # Same (seed, epoch, step) -> same degradations, whichever pipeline draws them.
    spec = Batches(images, np.zeros(len(images)), batch_size=8, seed=3, degrade=(Degradation("noise", 0.7, (2, 9)),))
    for epoch in range(2):
        assert_same(numpy_batches(spec, epoch), tf_batches(spec, epoch, epoch + 1))


@pytest.mark.parametrize("kind", ["tf.data", "numpy"])
def test_real_and_fake_images_are_degraded_alike(images, robust_degrade, kind):
    def pixels(label: int) -> np.ndarray:
        spec = Batches(images, np.full(len(images), label), **settings(degrade=robust_degrade))
        batches = tf_batches(spec, 0, 1) if kind == "tf.data" else numpy_batches(spec, 0)
        return np.concatenate([x for x, _ in batches])

    np.testing.assert_array_equal(pixels(1), pixels(0))  # degradations never look at the label
