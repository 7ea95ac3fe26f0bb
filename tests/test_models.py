"""Model factories: architectures as the reference study specifies, safe-mode save/load, offline weights, the DCGAN."""

import hashlib
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from realfake.errors import ParamsError, WeightsUnavailableError
from realfake.models.cnn import build_cnn
from realfake.models.dcgan import DCGAN, build_discriminator, build_generator, generate_images, generated_to_uint8
from realfake.models.fast import build_fast
from realfake.models.layers import FlipTTAMean, FlipTTAStack, ResNetPreprocess, SpaceToDepth, TTAMean, TTAViews
from realfake.models.transfer import WeightsFile, build_efficientnet, build_resnet50, fetch_weights

SHAPE = (32, 32, 3)


def pixels(count: int, seed: int = 0) -> np.ndarray:
    """uint8-valued float32 images, what every model is fed."""
    return np.random.default_rng(seed).integers(0, 256, (count, *SHAPE)).astype("float32")


def assert_roundtrip(model: keras.Model, tmp_path, x: np.ndarray) -> keras.Model:
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    return loaded


def no_network(monkeypatch, tmp_path) -> None:
    """An empty Keras cache under tmp_path and a downloader that fails as it does offline."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def fail(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", fail)


# ----------------------------------------------------------------------------- the fast detector


def fast(flip_tta: bool, space_to_depth: int = 1, tta_max_shift: int = 0) -> keras.Model:
    return build_fast(
        input_shape=SHAPE, stage_filters=(8, 16, 32), convs_per_stage=2, space_to_depth=space_to_depth, dropout=0.1,
        flip_tta=flip_tta, tta_max_shift=tta_max_shift, seed=0,
    )  # fmt: skip


def shifted(x: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """`x` moved by whole pixels, the borders filled by mirroring (edge pixel not repeated), written plainly."""
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[:, pad + dy : pad + dy + x.shape[1], pad + dx : pad + dx + x.shape[2]]


def test_fast_keeps_full_resolution_first_and_has_one_sigmoid_output():
    model = fast(flip_tta=False)
    assert model.input_shape == (None, *SHAPE) and model.output_shape == (None, 1)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.output.shape[1], c.filters) for c in convs] == [(32, 8), (32, 8), (16, 16), (16, 16), (8, 32), (8, 32)]
    assert all(c.strides == (1, 1) for c in convs)  # downsampling only by pooling, after full-resolution convs
    assert model.layers[-1].activation is keras.activations.sigmoid


def test_flip_tta_equals_averaging_predictions_on_mirrored_copies_by_hand(tmp_path):
    with_tta, plain = fast(flip_tta=True), fast(flip_tta=False)
    plain.set_weights(with_tta.get_weights())  # the TTA layers hold no weights: same network
    x = pixels(6)
    by_hand = (plain.predict(x, verbose=0) + plain.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(with_tta.predict(x, verbose=0), by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.predict(x, verbose=0), by_hand)  # the mirror really changes the scores
    loaded = assert_roundtrip(with_tta, tmp_path, x)  # safe mode: the layers are registered
    np.testing.assert_allclose(loaded.predict(x, verbose=0), by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flip", [True, False])
def test_shift_tta_equals_averaging_predictions_on_shifted_copies_by_hand(tmp_path, flip):
    with_tta, plain = fast(flip_tta=flip, tta_max_shift=1), fast(flip_tta=False)
    plain.set_weights(with_tta.get_weights())
    x = pixels(5)
    sources = [x, x[:, :, ::-1]] if flip else [x]
    copies = [shifted(image, dy, dx, pad=1) for image in sources for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert len(copies) == with_tta.get_layer("tta_views").views == (18 if flip else 9)
    by_hand = np.mean([plain.predict(copy, verbose=0) for copy in copies], axis=0)
    np.testing.assert_allclose(with_tta.predict(x, verbose=0), by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.predict(x, verbose=0), by_hand)  # the shifts really change the scores
    loaded = assert_roundtrip(with_tta, tmp_path, x)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), by_hand, rtol=1e-5, atol=1e-6)


def test_models_saved_with_the_earlier_flip_tta_layers_still_load_and_score_alike(tmp_path):
    current = fast(flip_tta=True)
    body = [layer for layer in current.layers if not isinstance(layer, TTAViews | TTAMean)]
    earlier = keras.Sequential([keras.Input(shape=SHAPE), FlipTTAStack(), *body, FlipTTAMean()])
    x = pixels(4)
    loaded = assert_roundtrip(earlier, tmp_path, x)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), current.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_fast_with_space_to_depth_convolves_every_pixel_at_half_resolution(tmp_path):
    model = fast(flip_tta=True, space_to_depth=2)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.output.shape[1], c.filters) for c in convs] == [(16, 8), (16, 8), (8, 16), (8, 16), (4, 32), (4, 32)]
    assert convs[0].kernel.shape == (3, 3, 12, 8)  # each position sees its 2x2 block's 12 pixel values
    assert model.output_shape == (None, 1)
    assert_roundtrip(model, tmp_path, pixels(3))  # the layer is registered: loads in safe mode


def test_space_to_depth_is_tensorflows_lossless_rearrangement():
    x = pixels(2)
    moved = np.asarray(SpaceToDepth(2)(x))
    np.testing.assert_array_equal(moved, tf.nn.space_to_depth(x, 2).numpy())
    assert moved.shape == (2, 16, 16, 12)
    np.testing.assert_array_equal(np.sort(moved.reshape(2, -1)), np.sort(x.reshape(2, -1)))  # every value kept
    np.testing.assert_array_equal(moved[0, 0, 0], x[0, :2, :2].reshape(-1))  # block (0, 0): rows, columns, RGB


def test_fast_refuses_a_block_size_that_does_not_divide_the_image():
    with pytest.raises(ValueError, match="space_to_depth=3 must be a positive divisor of the 32x32 input"):
        fast(flip_tta=False, space_to_depth=3)


@pytest.mark.parametrize(("flip", "max_shift", "views"), [(True, 0, 2), (True, 1, 18), (False, 2, 25)])
def test_tta_layers_are_identity_while_training(flip, max_shift, views):
    with_tta = fast(flip_tta=flip, tta_max_shift=max_shift)
    x = pixels(4)
    features = keras.Model(with_tta.inputs[0], with_tta.get_layer("relu3_2").output)
    assert features(x, training=True).shape[0] == 4
    assert features(x, training=False).shape[0] == 4 * views  # inference scores every view of every image


# ----------------------------------------------------------------------------- custom layers


def test_resnet_preprocess_equals_keras_preprocess_input():
    x = pixels(3)
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(ResNetPreprocess()(x)), expected, atol=1e-4)
    # BGR order: the first output channel is blue minus its mean.
    np.testing.assert_allclose(np.asarray(ResNetPreprocess()(x))[..., 0], x[..., 2] - 103.939, atol=1e-4)


# ----------------------------------------------------------------------------- CNN


def test_cnn_matches_seed_table():
    model = build_cnn(input_shape=SHAPE, conv_filters=[32, 64], kernel_size=3, pool_size=2, dense_units=64)
    summary = []
    for layer in model.layers:
        cfg = layer.get_config()
        summary.append(
            (
                type(layer).__name__,
                cfg.get("filters") or cfg.get("units") or cfg.get("pool_size") or cfg.get("scale"),
                cfg.get("kernel_size"),
                cfg.get("activation"),
            )
        )
    assert summary == [
        ("Rescaling", 1 / 255, None, None),
        ("Conv2D", 32, (3, 3), "relu"),
        ("MaxPooling2D", (2, 2), None, None),
        ("Conv2D", 64, (3, 3), "relu"),
        ("MaxPooling2D", (2, 2), None, None),
        ("Flatten", None, None, None),
        ("Dense", 64, None, "relu"),
        ("Dense", 1, None, "sigmoid"),
    ]
    assert model.name == "cnn"
    assert model.input_shape == (None, *SHAPE)
    assert model.layers[5].output.shape == (None, 6 * 6 * 64)  # valid convs: 32-30-15-13-6
    assert model.output_shape == (None, 1)


def test_cnn_rescales_inside_and_roundtrips(tmp_path):
    model = build_cnn(input_shape=SHAPE, conv_filters=[2], kernel_size=3, pool_size=2, dense_units=4)
    x = pixels(4)
    np.testing.assert_allclose(np.asarray(model.layers[0](x)), x / 255, rtol=1e-6)
    probs = model.predict(x, verbose=0)
    assert np.all((probs >= 0) & (probs <= 1))
    assert_roundtrip(model, tmp_path, x)


# ----------------------------------------------------------------------------- transfer models

EFFICIENTNET = dict(
    input_shape=SHAPE, num_classes=3, dense_units=8, kernel_l2=0.016, activity_l1=0.006, bias_l1=0.005,
    dropout=0.4, seed=7, params_key="models.efficientnet.weights",
)  # fmt: skip
RESNET50 = dict(
    input_shape=SHAPE, num_classes=2, dense_units=8, dropout=0.6, seed=7, params_key="models.resnet50.weights"
)


@pytest.fixture(scope="module")
def efficientnet() -> keras.Model:
    return build_efficientnet(weights=None, **EFFICIENTNET)


@pytest.fixture(scope="module")
def resnet50() -> keras.Model:
    return build_resnet50(weights=None, **RESNET50)


def test_efficientnet_architecture(efficientnet):
    model = efficientnet
    assert model.name == "efficientnet"
    assert model.input_shape == (None, *SHAPE)
    assert model.output_shape == (None, 3)
    base, bn, dense, dropout, head = model.layers[1:]
    assert base.name == "efficientnetv2-b3" and base.trainable
    assert base.output.shape == (None, 1536)  # pooling="max" over the top feature map
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in base.layers)  # include_preprocessing
    assert isinstance(bn, keras.layers.BatchNormalization)
    assert dense.units == 8 and dense.get_config()["activation"] == "relu"
    assert dense.kernel_regularizer.get_config() == {"l2": pytest.approx(0.016)}
    assert dense.activity_regularizer.get_config() == {"l1": pytest.approx(0.006)}
    assert dense.bias_regularizer.get_config() == {"l1": pytest.approx(0.005)}
    assert dropout.rate == pytest.approx(0.4) and dropout.seed == 7
    assert head.units == 3 and head.get_config()["activation"] == "softmax"


def test_resnet50_architecture(resnet50):
    model = resnet50
    assert model.name == "resnet50"
    assert model.input_shape == (None, *SHAPE)
    assert model.output_shape == (None, 2)
    preprocess, base, dense, dropout, head = model.layers[1:]
    assert isinstance(preprocess, ResNetPreprocess)
    assert base.trainable and base.output.shape == (None, 2048)
    assert dense.units == 8 and dense.get_config()["activation"] == "relu"
    assert dropout.rate == pytest.approx(0.6) and dropout.seed == 7
    assert head.units == 2 and head.get_config()["activation"] == "softmax"


@pytest.mark.parametrize("name", ["efficientnet", "resnet50"])
def test_transfer_models_roundtrip_in_safe_mode(name, request, tmp_path):
    model = request.getfixturevalue(name)
    x = pixels(2)
    loaded = assert_roundtrip(model, tmp_path, x)
    np.testing.assert_allclose(loaded.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("build", "kwargs", "file_name"),
    [
        (build_efficientnet, EFFICIENTNET, "efficientnetv2-b3_notop.h5"),
        (build_resnet50, RESNET50, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_offline_imagenet_weights_raise_actionable_error(build, kwargs, file_name, monkeypatch, tmp_path):
    no_network(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError) as info:
        build(weights="imagenet", **kwargs)
    message = str(info.value)
    assert file_name in message
    assert str(tmp_path / "keras_home" / "models") in message
    assert f"dvc exp run -S {kwargs['params_key']}=null" in message


def test_weights_placed_in_keras_cache_are_used_offline(monkeypatch, tmp_path):
    no_network(monkeypatch, tmp_path)
    cached = tmp_path / "keras_home" / "models" / "weights_notop.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in weights")
    wanted = WeightsFile("weights_notop.h5", "https://example.invalid/weights_notop.h5", "")
    right_hash = WeightsFile(wanted.name, wanted.origin, hashlib.md5(cached.read_bytes()).hexdigest())
    assert fetch_weights(right_hash, params_key="k") == str(cached)
    # A truncated or corrupt file fails Keras' hash check, which then tries (and here fails) to download.
    wrong_hash = WeightsFile(wanted.name, wanted.origin, "0" * 32)
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(wrong_hash, params_key="k")


def test_unknown_weights_value_names_the_key():
    with pytest.raises(ParamsError, match="models.resnet50.weights"):
        build_resnet50(weights="imagenet21k", **RESNET50)


# ----------------------------------------------------------------------------- DCGAN


def tiny_dcgan(dropout: float = 0.3) -> DCGAN:
    keras.utils.set_random_seed(0)
    generator = build_generator(noise_dim=8, dense_filters=8, filters=(4, 4), kernel_size=3)
    discriminator = build_discriminator(input_shape=SHAPE, filters=(4, 8), kernel_size=3, dropout=dropout)
    gan = DCGAN(generator, discriminator, noise_dim=8, seed=1)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(1e-3),
        g_optimizer=keras.optimizers.Adam(1e-3),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


def test_generator_and_discriminator_match_seed_notes():
    generator = build_generator(noise_dim=100, dense_filters=256, filters=(128, 64), kernel_size=5)
    assert generator.name == "generator"
    assert generator.input_shape == (None, 100) and generator.output_shape == (None, *SHAPE)
    assert [type(layer).__name__ for layer in generator.layers] == [
        "Dense", "BatchNormalization", "LeakyReLU", "Reshape",
        "Conv2DTranspose", "BatchNormalization", "LeakyReLU",
        "Conv2DTranspose", "BatchNormalization", "LeakyReLU",
        "Conv2DTranspose",
    ]  # fmt: skip
    dense, transposed = generator.layers[0], [layer for layer in generator.layers if "transpose" in layer.name]
    assert dense.units == 8 * 8 * 256 and not dense.use_bias
    assert [(t.filters, t.strides, t.use_bias) for t in transposed] == [
        (128, (1, 1), False),
        (64, (2, 2), False),
        (3, (2, 2), True),
    ]
    assert transposed[-1].get_config()["activation"] == "tanh"

    discriminator = build_discriminator(input_shape=SHAPE, filters=(64, 128), kernel_size=5, dropout=0.3)
    assert discriminator.name == "discriminator"
    assert discriminator.output_shape == (None, 1)
    assert [type(layer).__name__ for layer in discriminator.layers] == [
        "Conv2D", "LeakyReLU", "Dropout", "Conv2D", "LeakyReLU", "Dropout", "Flatten", "Dense",
    ]  # fmt: skip
    assert discriminator.layers[-1].get_config()["activation"] == "linear"  # a logit


def test_generated_to_uint8_maps_tanh_range_to_pixels():
    out = generated_to_uint8(np.array([-1.0, -2.0, 0.0, 1.0, 2.0], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_generate_images_is_seeded_and_deterministic():
    generator = tiny_dcgan().generator
    images = generate_images(generator, count=5, noise_dim=8, seed=3, batch_size=2)
    assert images.dtype == np.uint8 and images.shape == (5, *SHAPE)
    np.testing.assert_array_equal(images, generate_images(generator, count=5, noise_dim=8, seed=3, batch_size=5))
    assert not np.array_equal(images, generate_images(generator, count=5, noise_dim=8, seed=4, batch_size=2))


def test_train_step_accepts_images_or_image_label_pairs():
    gan = tiny_dcgan()
    x = tf.constant(pixels(4))
    for batch in (x, (x, tf.zeros(4, dtype=tf.int32))):
        logs = gan.train_step(batch)
        assert set(logs) == {"d_loss", "g_loss"}
        assert all(np.isfinite(float(value)) for value in logs.values())
    assert int(gan.d_optimizer.iterations) == int(gan.g_optimizer.iterations) == 2


def test_fit_with_backup_and_restore_gives_finite_losses(tmp_path):
    gan = tiny_dcgan()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    history = gan.fit(pixels(16), batch_size=8, epochs=1, verbose=0, callbacks=[backup])
    assert set(history.history) == {"d_loss", "g_loss"}
    assert all(np.isfinite(values[0]) for values in history.history.values())


def test_interrupted_fit_resumes_exactly(tmp_path):
    """Weights, both optimizers and the noise/dropout seeds come back: resuming equals not stopping."""
    x, fit_args = pixels(16), dict(batch_size=8, epochs=3, verbose=0, shuffle=False)

    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # a killed job: BackupAndRestore keeps its checkpoint

    uninterrupted = tiny_dcgan()
    uninterrupted.fit(x, **fit_args)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        tiny_dcgan().fit(
            x, callbacks=[keras.callbacks.BackupAndRestore(backup_dir), StopAfterSecondEpoch()], **fit_args
        )
    resumed = tiny_dcgan()
    history = resumed.fit(x, callbacks=[keras.callbacks.BackupAndRestore(backup_dir)], **fit_args)
    assert history.epoch == [2]
    assert int(resumed.g_optimizer.iterations) == 6
    for expected, actual in zip(uninterrupted.generator.weights, resumed.generator.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


def test_generator_roundtrips_in_safe_mode(tmp_path):
    noise = np.random.default_rng(0).standard_normal((2, 8)).astype("float32")
    assert_roundtrip(tiny_dcgan().generator, tmp_path, noise)


def test_resnet50_takes_its_batchnorm_momentum_from_params():
    import keras

    model = build_resnet50(weights=None, batchnorm_momentum=0.9, **RESNET50)
    norms = [
        layer for layer in model.get_layer("resnet50").layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 53 and {layer.momentum for layer in norms} == {0.9}
