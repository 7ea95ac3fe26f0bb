"""Image degradations applied alike to real and fake images: JPEG re-encoding, down-and-up scaling, Gaussian blur and
Gaussian noise, alone or chained.

Two users share these functions: the robustness evaluation (a fixed `Perturbation`, e.g. "downscale 2 + jpeg 75",
applied to every test image) and training (random `Degradation`s drawn per image, so a detector learns cues that
survive them). Every function takes and returns uint8 (N, height, width, 3) arrays and works one image at a time,
so nothing holds a float copy of a whole set. JPEG is written by Pillow at quality 1-95 with 4:2:0 chroma
subsampling, CIFAKE's own codec settings. A strength of zero (sigma 0, factor 1) leaves images unchanged; JPEG has
no such strength (any quality re-quantises).
"""

from __future__ import annotations

import dataclasses
import io
import typing
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

Kind = typing.Literal["jpeg", "downscale", "blur", "noise"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
JPEG_SUBSAMPLING = "4:2:0"  # CIFAKE's chroma subsampling (Pillow's default)


# ----------------------------------------------------------------------------- one image


def jpeg_image(image: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode one uint8 RGB image as a JPEG of `quality` (Pillow, 4:2:0) and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def downscale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by `factor` and enlarge back, both bicubic: what a thumbnail or a low-resolution upload does."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    resized = Image.fromarray(image).resize(small, Image.BICUBIC).resize((width, height), Image.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def blur_image(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; Pillow's GaussianBlur radius is the kernel's standard deviation in pixels."""
    if sigma == 0:
        return image
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.uint8)


def noise_image(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (sigma on the 0-255 scale), round and clip back to uint8."""
    if sigma == 0:
        return image
    return np.clip(np.rint(image + rng.normal(0.0, sigma, image.shape)), 0, 255).astype(np.uint8)


def apply_step(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    strength = float(strength)  # a NumPy scalar would trip Pillow's comparisons with tuples
    if kind == "jpeg":
        return jpeg_image(image, int(strength))
    if kind == "downscale":
        return downscale_image(image, strength)
    if kind == "blur":
        return blur_image(image, strength)
    if kind == "noise":
        return noise_image(image, strength, rng)
    raise ValueError(f"unknown degradation kind {kind!r}; allowed: {', '.join(KINDS)}")


def check_strength(kind: str, strength: float) -> None:
    """Raise ValueError when `strength` is outside what `kind` allows."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "jpeg" and not (1 <= strength <= 95 and float(strength).is_integer()):
        raise ValueError(f"jpeg {strength:g}: JPEG quality must be a whole number in 1..95 (Pillow's range)")
    if kind == "downscale" and strength < 1:
        raise ValueError(f"downscale {strength:g}: the factor must be >= 1 (1 = unchanged)")
    if kind in ("blur", "noise") and strength < 0:
        raise ValueError(f"{kind} {strength:g}: sigma must be >= 0 (0 = unchanged)")


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, height, width, 3), got {images.dtype} {images.shape}")


# ----------------------------------------------------------------------------- fixed perturbations (robustness)


@dataclasses.dataclass(frozen=True)
class Step:
    kind: Kind
    strength: float  # JPEG quality (1-95), downscale factor (>= 1), blur or noise sigma (px / 0-255 levels, >= 0)

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.strength:g}"


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One step or a chain of them, applied in order; written "jpeg 90" or "downscale 2 + jpeg 75"."""

    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        return "+".join(step.name for step in self.steps)

    @classmethod
    def parse(cls, text: str) -> Perturbation:
        """ "kind strength [+ kind strength ...]"; raises ValueError saying what is wrong."""
        steps = []
        for part in str(text).split("+"):
            words = part.split()
            if len(words) != 2:
                raise ValueError(f"{text!r}: write each step as 'kind strength' (e.g. 'downscale 2 + jpeg 75')")
            try:
                strength = float(words[1])
            except ValueError:
                raise ValueError(f"{text!r}: {words[1]!r} is not a number") from None
            check_strength(words[0], strength)
            steps.append(Step(words[0], strength))
        return cls(tuple(steps))

    @property
    def text(self) -> str:
        return " + ".join(f"{step.kind} {step.strength:g}" for step in self.steps)


def perturb(images: np.ndarray, perturbation: Perturbation, *, seed: int) -> np.ndarray:
    """Apply one perturbation to every uint8 image, real or fake alike (noise drawn from `seed`)."""
    _check_images(images)
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        for step in perturbation.steps:
            image = apply_step(image, step.kind, step.strength, rng)
        out[i] = image
    return out


# ----------------------------------------------------------------------------- random degradations (training)


@dataclasses.dataclass(frozen=True)
class Degradation:
    """With `probability`, apply `kind` at a strength drawn uniformly from `range` (JPEG: a whole quality)."""

    kind: Kind
    probability: float
    range: tuple[float, ...]  # [low, high]

    def check(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if len(self.range) != 2 or self.range[0] > self.range[1]:
            raise ValueError(f"range must be [low, high] with low <= high, got {list(self.range)}")
        for strength in self.range:
            check_strength(self.kind, strength)


def degrade_batch(images: np.ndarray, degradations: Sequence[Degradation], rng: np.random.Generator) -> np.ndarray:
    """Each image through each degradation in turn, each applied with its probability at a random strength.

    Every draw comes from `rng` in a fixed order (per image: per degradation one uniform for "apply?" and one for
    the strength, then the noise), so a batch is a pure function of the generator's state. Returns a new array.
    """
    _check_images(images)
    out = images.copy()
    for i in range(len(out)):
        image = out[i]
        for degradation in degradations:
            apply, where = rng.random(2)
            if apply >= degradation.probability:
                continue
            low, high = degradation.range
            strength = low + where * (high - low)
            if degradation.kind == "jpeg":
                strength = round(strength)
            image = apply_step(image, degradation.kind, strength, rng)
        out[i] = image
    return out
