"""DCGAN (generator, discriminator, adversarial training) that makes the third class of fake images.

Follows the original notebook's architecture (the TensorFlow DCGAN tutorial) and keras-io's GAN example:
a `keras.Model` subclass with its own `compile` and `train_step`, so `fit()` and its callbacks work as usual.
`build_dcgan(precision=...)` builds both networks under a Keras dtype policy (bfloat16 compute on CPUs with AMX);
the generator's last layer and the discriminator's logit layer stay float32, so images and losses are float32.
The train step takes gradients with TensorFlow's GradientTape, so the DCGAN trains under Keras' TensorFlow backend
only; TensorFlow is imported inside it, so that importing `realfake.models` works under any backend.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from realfake.errors import RealfakeError
from realfake.training.precision import dtype_policy

# CIFAKE images are 32x32 RGB: a fact of the data, not a hyperparameter.
IMAGE_SHAPE = (32, 32, 3)
# Prefix of the random-seed states' keys in the DCGAN's saved weights.
_RNG_KEY_PREFIX = "rng_"

logger = logging.getLogger(__name__)


def build_generator(
    *, noise_dim: int, dense_filters: int, filters: Sequence[int], kernel_size: int
) -> keras.Sequential:
    """Noise (noise_dim,) -> tanh image (32, 32, 3) in [-1, 1].

    Dense to a (s, s, dense_filters) map, then one Conv2DTranspose per entry of `filters` (the first at stride
    1, the rest at stride 2) and a final stride-2 Conv2DTranspose to 3 channels; s = 32 / 2**len(filters).
    The study used dense_filters=256, filters=(128, 64), kernel_size=5.
    """
    side = IMAGE_SHAPE[0] // 2 ** len(filters)
    if not filters or side * 2 ** len(filters) != IMAGE_SHAPE[0]:
        raise ValueError(f"filters={list(filters)}: 32 must be divisible by 2**len(filters) (len >= 1).")
    upsampling = []
    for i, width in enumerate(filters):
        upsampling += [
            layers.Conv2DTranspose(width, kernel_size, strides=1 if i == 0 else 2, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.LeakyReLU(),
        ]
    return keras.Sequential(
        [
            keras.Input(shape=(noise_dim,)),
            layers.Dense(side * side * dense_filters, use_bias=False),
            layers.BatchNormalization(),
            layers.LeakyReLU(),
            layers.Reshape((side, side, dense_filters)),
            *upsampling,
            # float32 whatever the policy: saved samples and the discriminator's input keep full precision
            layers.Conv2DTranspose(
                IMAGE_SHAPE[2], kernel_size, strides=2, padding="same", activation="tanh", dtype="float32"
            ),
        ],
        name="generator",
    )


def build_discriminator(
    *, input_shape: tuple[int, int, int], filters: Sequence[int], kernel_size: int, dropout: float
) -> keras.Sequential:
    """Image in [-1, 1] -> one logit (real > 0). Per entry of `filters`: stride-2 Conv2D, LeakyReLU, Dropout.

    The study used filters=(64, 128), kernel_size=5, dropout=0.3.
    """
    blocks = []
    for width in filters:
        blocks += [
            layers.Conv2D(width, kernel_size, strides=2, padding="same"),
            layers.LeakyReLU(),
            layers.Dropout(dropout),
        ]
    return keras.Sequential(
        [keras.Input(shape=input_shape), *blocks, layers.Flatten(), layers.Dense(1, dtype="float32")],
        name="discriminator",
    )


def scale_to_tanh_range(images):
    """uint8-valued pixels 0..255 -> [-1, 1], the range of the generator's tanh output."""
    return ops.cast(images, "float32") / 127.5 - 1.0


def generated_to_uint8(x) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 pixels 0..255 (rounded, clipped)."""
    pixels = np.rint((np.asarray(x, dtype=np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def generate_images(generator: keras.Model, *, count: int, noise_dim: int, seed: int, batch_size: int) -> np.ndarray:
    """Generate `count` uint8 images (count, 32, 32, 3); the same seed gives the same images.

    Noise comes from NumPy's seeded generator and the generator runs in inference mode (BatchNormalization
    uses its moving statistics), so the result does not depend on batch size or global random state.
    """
    noise = np.random.default_rng(seed).standard_normal((count, noise_dim)).astype(np.float32)
    return generated_to_uint8(generator.predict(noise, batch_size=batch_size, verbose=0))


def load_generator(path: Path) -> keras.Model:
    """Load a saved generator in safe mode and check it maps noise (noise_dim,) to (32, 32, 3) images.

    Raises RealfakeError naming the file when it is missing, unreadable or of another shape.
    """
    path = Path(path)
    remedy = "run `dvc repro train_dcgan` to train and save the generator"
    if not path.is_file():
        raise RealfakeError(f"{path}: DCGAN generator not found; {remedy}")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras reports damaged or foreign files as ValueError, OSError, zip errors, ...
        raise RealfakeError(f"{path}: not a loadable Keras model ({exc}); {remedy}") from None
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or len(outputs) != 1 or tuple(outputs[0].shape[1:]) != IMAGE_SHAPE:
        got = f"{[tuple(t.shape) for t in inputs]} -> {[tuple(t.shape) for t in outputs]}"
        raise RealfakeError(
            f"{path}: expected a generator mapping noise (batch, noise_dim) to images (batch, 32, 32, 3), "
            f"got {got}; {remedy}"
        )
    return model


def build_dcgan(
    *,
    noise_dim: int,
    dense_filters: int,
    g_filters: Sequence[int],
    d_filters: Sequence[int],
    kernel_size: int,
    dropout: float,
    learning_rate: float,
    seed: int,
    beta_1: float = 0.9,
    precision: str = "float32",
) -> "DCGAN":
    """The reference study's DCGAN, compiled: BCE from logits, one Adam(learning_rate, beta_1) per network, noise
    seeded by `seed`; both networks built under `precision` (auto | float32 | mixed_bfloat16)."""
    with dtype_policy(precision):
        generator = build_generator(
            noise_dim=noise_dim, dense_filters=dense_filters, filters=g_filters, kernel_size=kernel_size
        )
        discriminator = build_discriminator(
            input_shape=IMAGE_SHAPE, filters=d_filters, kernel_size=kernel_size, dropout=dropout
        )
    gan = DCGAN(generator, discriminator, noise_dim=noise_dim, seed=seed)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate, beta_1=beta_1),
        g_optimizer=keras.optimizers.Adam(learning_rate, beta_1=beta_1),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


class DCGAN(keras.Model):
    """Generator + discriminator trained adversarially through `fit()`.

    Batches hold uint8-valued images 0..255 (any float dtype), alone or as (images, labels); labels are
    ignored. Both networks update on every batch from the same noise, as in the TensorFlow DCGAN tutorial.
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, noise_dim: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.noise_dim = noise_dim
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        # Both sub-networks are built from their Input layers; a backup loads only into a built model.
        self.built = True

    def compile(self, d_optimizer, g_optimizer, loss_fn, **kwargs):
        """Set the two optimizers and the loss (e.g. BinaryCrossentropy(from_logits=True))."""
        # optimizer=None: otherwise Keras adds a default RMSprop that nothing uses but checkpoints still hold.
        super().compile(optimizer=None, **kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        # Create the optimizer slots now, so weights saved mid-training (a backup) can be loaded
        # into a freshly compiled DCGAN before its first step.
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def _rng_states(self) -> list:
        """Random-seed state of the noise and of the sub-networks' Dropout layers (`variables` minus `weights`)."""
        weight_ids = {id(w) for w in self.weights}
        return [v for v in self.variables if id(v) not in weight_ids]

    # Keras does not checkpoint SeedGenerator state. Saving it with the DCGAN's own variables lets a fit()
    # resumed from a backup continue the noise and dropout sequences instead of replaying them.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, state in enumerate(self._rng_states()):
            store[f"{_RNG_KEY_PREFIX}{i}"] = state

    def load_own_variables(self, store):
        # No super(): the DCGAN owns no weights itself (its sub-networks load theirs), only the seed states.
        keys = [key for key in store.keys() if key.startswith(_RNG_KEY_PREFIX)]  # noqa: SIM118 (an H5 store)
        states = self._rng_states()
        if len(keys) != len(states):
            logger.warning(
                "Checkpoint holds %d random-seed states, DCGAN has %d: not restored.", len(keys), len(states)
            )
            return
        for i, state in enumerate(states):
            state.assign(store[f"{_RNG_KEY_PREFIX}{i}"])

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def call(self, noise, training=False):
        """Generate images in [-1, 1] from noise."""
        return self.generator(noise, training=training)

    def train_step(self, data):
        import tensorflow as tf

        images = data[0] if isinstance(data, (tuple, list)) else data
        real = scale_to_tanh_range(images)
        batch_size = ops.shape(real)[0]
        noise = keras.random.normal((batch_size, self.noise_dim), seed=self.seed_generator)
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self.generator(noise, training=True)
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = self.loss_fn(ops.ones_like(real_logits), real_logits) + self.loss_fn(
                ops.zeros_like(fake_logits), fake_logits
            )
            g_loss = self.loss_fn(ops.ones_like(fake_logits), fake_logits)
        d_vars = self.discriminator.trainable_variables
        g_vars = self.generator.trainable_variables
        self.d_optimizer.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars, strict=True))
        self.g_optimizer.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars, strict=True))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {m.name: m.result() for m in self.metrics}
