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
