"""Model factories. Importing this package also registers the custom layers that saved models need."""

from realfake.models.cnn import build_cnn
from realfake.models.dcgan import (
    DCGAN,
    build_discriminator,
    build_generator,
    generate_images,
    generated_to_uint8,
)
from realfake.models.fast import build_fast
from realfake.models.layers import FlipTTAMean, FlipTTAStack, ResNetPreprocess, SpaceToDepth, TTAMean, TTAViews
from realfake.models.transfer import build_efficientnet, build_resnet50, fetch_weights, keras_models_dir

__all__ = [
    "DCGAN",
    "FlipTTAMean",
    "FlipTTAStack",
    "ResNetPreprocess",
    "SpaceToDepth",
    "TTAMean",
    "TTAViews",
    "build_cnn",
    "build_discriminator",
    "build_efficientnet",
    "build_fast",
    "build_generator",
    "build_resnet50",
    "fetch_weights",
    "generate_images",
    "generated_to_uint8",
    "keras_models_dir",
]
