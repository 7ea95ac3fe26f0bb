"""Custom Keras layers, registered so saved models load with `keras.models.load_model` in safe mode."""

import keras
from keras import ops

from realfake.data.transforms import pixel_permutations

# ImageNet channel means in BGR order, as `keras.applications.resnet50.preprocess_input` ("caffe" mode) uses.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="realfake")
class ResNetPreprocess(keras.layers.Layer):
    """ResNet50's "caffe" preprocessing: RGB -> BGR, then subtract the ImageNet means (no scaling).

    Expects channels-last RGB pixels in 0..255. Replaces a Lambda layer so the saved model stays loadable in
    safe mode.
    """

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class InferenceOnly(keras.layers.Layer):
    """A layer that acts only at inference (training=False) and is the identity while training."""

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="realfake")
class TTAViews(InferenceOnly):
    """Test-time augmentation, first half: at inference, replace a batch of N images by `views` transformed copies
    of it, view after view (N -> views * N). The views: each image, its mirror image if `flip`, each of them under
    every whole-pixel shift up to `max_shift` in y and x with the borders mirrored (training's own pixel moves,
    `transforms.pixel_permutations`). Pair it with `TTAMean(views)` at the end of the same chain of per-image
    layers. The copies are made inside the model, batch by batch: no caller ever holds them.
    """

    def __init__(self, flip: bool, max_shift: int, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.max_shift = flip, max_shift
        self.views = (2 if flip else 1) * (2 * max_shift + 1) ** 2

    def build(self, input_shape):
        _, height, width, _ = input_shape
        self._tables = pixel_permutations(height, width, ("hflip",) if self.flip else (), self.max_shift)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training:
            return inputs
        _, height, width, channels = inputs.shape
        pixels = ops.reshape(inputs, (-1, height * width, channels))
        copies = ops.take(pixels, ops.convert_to_tensor(self._tables), axis=1)  # (N, views, H*W, C)
        return ops.reshape(ops.transpose(copies, (1, 0, 2, 3)), (-1, height, width, channels))

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "max_shift": self.max_shift}


@keras.saving.register_keras_serializable(package="realfake")
class TTAMean(InferenceOnly):
    """Test-time augmentation, second half: at inference, average each image's outputs over its `views` copies
    (views * N -> N). Everything between the two halves must treat images independently (BatchNorm does at
    inference).
    """

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = views

    def call(self, inputs, training=None):
        if training:
            return inputs
        per_view = ops.reshape(inputs, (self.views, -1, *inputs.shape[1:]))
        return ops.mean(per_view, axis=0)

    def get_config(self):
        return {**super().get_config(), "views": self.views}


# Models saved before TTAViews/TTAMean existed name these two (flip only, no config); kept so those files load.
@keras.saving.register_keras_serializable(package="realfake")
class FlipTTAStack(TTAViews):
    """`TTAViews(flip=True, max_shift=0)`: each image, then its mirror image (N -> 2N)."""

    def __init__(self, **kwargs):
        super().__init__(flip=True, max_shift=0, **kwargs)

    def get_config(self):
        return InferenceOnly.get_config(self)


@keras.saving.register_keras_serializable(package="realfake")
class FlipTTAMean(TTAMean):
    """`TTAMean(views=2)`: each image's output averaged with its mirror's (2N -> N)."""

    def __init__(self, **kwargs):
        super().__init__(views=2, **kwargs)

    def get_config(self):
        return InferenceOnly.get_config(self)


@keras.saving.register_keras_serializable(package="realfake")
class SpaceToDepth(keras.layers.Layer):
    """Move each `block_size` x `block_size` patch of pixels into the channels: (H, W, C) -> (H/b, W/b, b*b*C).

    Lossless (a pure rearrangement, every pixel value kept), unlike pooling, resizing or a strided convolution that
    can skip pixels; a 3x3 convolution after it sees a (3b x 3b)-pixel window at 1/b^2 of the positions.
    Channel order within a block is TensorFlow's `space_to_depth`: row, then column, then channel.
    """

    def __init__(self, block_size: int, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, inputs):
        b = self.block_size
        _, height, width, channels = inputs.shape
        blocks = ops.reshape(inputs, (-1, height // b, b, width // b, b, channels))
        blocks = ops.transpose(blocks, (0, 1, 3, 2, 4, 5))
        return ops.reshape(blocks, (-1, height // b, width // b, b * b * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        return (batch, height // b, width // b, b * b * channels)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="realfake")
class Calibration(keras.layers.Layer):
    """Temperature scaling of a binary output: P(fake) -> sigmoid(logit(P(fake)) / temperature).

    Takes one sigmoid column (P(fake)) or two softmax columns (P(real), P(fake)) and returns the same layout.
    The temperature is fitted on the validation split after training (`evaluation.calibration.fit_temperature`)
    and stored here, so every consumer of the saved model gets calibrated probabilities.
    """

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        eps = 1e-7
        p = ops.clip(inputs[..., -1:], eps, 1 - eps)
        calibrated = ops.sigmoid((ops.log(p) - ops.log(1 - p)) / self.temperature)
        if inputs.shape[-1] == 1:
            return calibrated
        return ops.concatenate([1 - calibrated, calibrated], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
