"""realfake's own detector: a compact VGG-style network for 32x32 real-vs-generated images, P(fake) out.

Design, from what tells CIFAKE's fakes apart: the cues are fine, high-frequency pixel statistics, so no pixel is
dropped before the first convolution has seen it: either the first stage convolves at full resolution, or a
lossless space-to-depth rearrangement hands every pixel of each 2x2 block to it as channels (4x fewer positions,
so wider layers for the same time); downsampling after that is max pooling, never a strided conv that could skip
pixels. BatchNorm after every convolution lets a high learning rate train it in few epochs; global
average pooling keeps the head small. Optional test-time augmentation (flips, shifts) lives inside the saved model.
"""

from collections.abc import Sequence

import keras
from keras import layers

from realfake.models.layers import SpaceToDepth, TTAMean, TTAViews


def build_fast(
    *,
    input_shape: tuple[int, int, int],
    stage_filters: Sequence[int],
    convs_per_stage: int,
    space_to_depth: int,
    dropout: float,
    flip_tta: bool,
    tta_max_shift: int,
    seed: int,
    num_classes: int = 2,
) -> keras.Model:
    """Rescale to [-1, 1]; with `space_to_depth` > 1, rearrange each block of that many pixels squared into
    channels; per stage [Conv3x3 - BatchNorm - ReLU] x convs_per_stage, then 2x2 max-pool between
    stages; global average pool, dropout, Dense(1, sigmoid) = P(fake); with `num_classes` > 2, Dense(num_classes,
    softmax) = the class probabilities.

    Takes uint8-valued pixels 0..255. With `flip_tta`, inference (not training) scores every image and its
    mirror image in one batch and averages the probabilities; with `tta_max_shift` > 0 also every whole-pixel
    shift of them up to that far (borders mirrored, as training's `max_shift`): (2 * tta_max_shift + 1)^2 times
    the inference work. The TTA layers are the identity while training.
    """
    height, width, _ = input_shape
    if space_to_depth < 1 or height % space_to_depth or width % space_to_depth:
        raise ValueError(f"space_to_depth={space_to_depth} must be a positive divisor of the {height}x{width} input")
    body: list[keras.layers.Layer] = [layers.Rescaling(1.0 / 127.5, offset=-1.0)]
    if space_to_depth > 1:
        body.append(SpaceToDepth(space_to_depth, name="space_to_depth"))
    for stage, filters in enumerate(stage_filters):
        if stage:
            body.append(layers.MaxPooling2D(2, name=f"pool{stage}"))
        for conv in range(convs_per_stage):
            body += [
                # no bias: the BatchNorm after it has one
                layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{stage + 1}_{conv + 1}"),
                layers.BatchNormalization(name=f"bn{stage + 1}_{conv + 1}"),
                layers.ReLU(name=f"relu{stage + 1}_{conv + 1}"),
            ]
    head = [
        layers.GlobalAveragePooling2D(),
        layers.Dropout(dropout, seed=seed),
        layers.Dense(1, activation="sigmoid", name="p_fake")
        if num_classes == 2
        else layers.Dense(num_classes, activation="softmax", name="probabilities"),
    ]
    stack, mean = [], []
    if flip_tta or tta_max_shift:
        views = TTAViews(flip=flip_tta, max_shift=tta_max_shift, name="tta_views")
        stack, mean = [views], [TTAMean(views.views, name="tta_mean")]
    return keras.Sequential([keras.Input(shape=input_shape), *stack, *body, *head, *mean], name="fast")
