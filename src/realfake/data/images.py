"""Turning any picture into a detector's input: 8-bit RGB (transparency over white) at the model's size, cropped and
resized the way `realfake predict` does it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited onto white, the background nearly every viewer shows them on; the colour
# values hidden under alpha 0 are arbitrary (often black) and would otherwise leak into the prediction.
BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: grayscale and palette images are expanded, transparency is composited onto BACKGROUND.

    16-bit grayscale keeps its 8 most significant bits (Pillow's convert() would clip it at 255, i.e. white).
    """
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (width, height): the largest centred crop of the target's shape, resized with LANCZOS.

    An image already of `size` is returned untouched (no resampling at all). Cropping rather than squashing keeps
    textures undistorted, and a detector of generated images looks at texture. LANCZOS: Pillow antialiases every
    filter but NEAREST by widening it with the reduction factor, and of those LANCZOS has the sharpest cut-off, so
    it keeps the fine detail just below the new resolution (where generator artefacts live) that BOX's area
    average and BILINEAR blur, with less aliasing than BOX lets through; it also serves for enlarging small
    images. No reducing_gap and no JPEG draft mode: both trade exactness for speed.
    """
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
