"""Custom Keras layers, registered so saved models load with `keras.models.load_model` in safe mode."""

import keras
from keras import ops

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
class FlipTTAStack(InferenceOnly):
    """Flip test-time augmentation, first half: at inference, append the mirror image of every image to the
    batch (N -> 2N). Pair it with `FlipTTAMean` at the end of the same chain of per-image layers.
    """

    def call(self, inputs, training=None):
        if training:
            return inputs
        return ops.concatenate([inputs, ops.flip(inputs, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="realfake")
class FlipTTAMean(InferenceOnly):
    """Flip test-time augmentation, second half: at inference, average each image's output with its mirror's
    (2N -> N). Everything between the two halves must treat images independently (BatchNorm does at inference).
    """

    def call(self, inputs, training=None):
        if training:
            return inputs
        original, mirrored = ops.split(inputs, 2, axis=0)
        return (original + mirrored) / 2


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
