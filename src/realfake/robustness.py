"""Perturbations applied alike to real and fake test images, to see which cues a detector depends on.

Every function takes and returns uint8 (N, height, width, 3) arrays; work is done one image (or one chunk) at a
time, so nothing holds a float copy of the whole set. A perturbation of strength zero (blur or noise sigma 0,
downscale factor 1) returns the images unchanged; JPEG has no such strength (quality 100 still re-quantises).
"""

from __future__ import annotations

import dataclasses
import io
import typing
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFilter

Kind = typing.Literal["jpeg", "downscale", "blur", "noise"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
_NOISE_CHUNK = 1024  # images per float64 chunk when adding noise


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """`kind` with its `strength`: JPEG quality (1-95), downscale factor (>= 1), blur sigma or noise sigma
    (pixels, on the 0-255 scale; >= 0)."""

    kind: Kind
    strength: float

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.strength:g}"

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown perturbation kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == "jpeg" and not (1 <= self.strength <= 95 and float(self.strength).is_integer()):
            raise ValueError(f"{self.name}: JPEG quality must be a whole number in 1..95 (Pillow's range)")
        if self.kind == "downscale" and self.strength < 1:
            raise ValueError(f"{self.name}: downscale factor must be >= 1 (1 = unchanged)")
        if self.kind in ("blur", "noise") and self.strength < 0:
            raise ValueError(f"{self.name}: sigma must be >= 0 (0 = unchanged)")


def _per_image(images: np.ndarray, change) -> np.ndarray:
    return np.stack([np.asarray(change(Image.fromarray(image)), dtype=np.uint8) for image in images])


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode as JPEG (Pillow, 4:2:0 like CIFAKE's own files) and decode again."""

    def reencode(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(quality))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return _per_image(images, reencode)


def downscale(images: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by `factor` and enlarge back, both bicubic: what a thumbnail or a low-resolution upload does."""
    if factor == 1:
        return images.copy()
    height, width = images.shape[1:3]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    return _per_image(images, lambda im: im.resize(small, Image.BICUBIC).resize((width, height), Image.BICUBIC))


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; Pillow's GaussianBlur radius is the kernel's standard deviation in pixels."""
    if sigma == 0:
        return images.copy()
    return _per_image(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius=sigma)))


def noise(images: np.ndarray, sigma: float, *, seed: int) -> np.ndarray:
    """Add seeded Gaussian noise (sigma on the 0-255 scale), round and clip back to uint8."""
    if sigma == 0:
        return images.copy()
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for start in range(0, len(images), _NOISE_CHUNK):
        chunk = images[start : start + _NOISE_CHUNK]
        noisy = chunk + rng.normal(0.0, sigma, chunk.shape)
        out[start : start + _NOISE_CHUNK] = np.clip(np.rint(noisy), 0, 255)
    return out


def perturb(images: np.ndarray, perturbation: Perturbation, *, seed: int) -> np.ndarray:
    """Apply one perturbation to uint8 images (the same way to every image, real or fake)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, height, width, 3), got {images.dtype} {images.shape}")
    perturbation.check()
    kind, strength = perturbation.kind, perturbation.strength
    if kind == "jpeg":
        return jpeg(images, int(strength))
    if kind == "downscale":
        return downscale(images, strength)
    if kind == "blur":
        return blur(images, strength)
    return noise(images, strength, seed=seed)


def stratified_sample(labels: np.ndarray, *, count: int | None, seed: int) -> np.ndarray:
    """Sorted indices of up to `count` items, split as evenly as possible over the label values (None = all)."""
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    chosen = []
    for i, value in enumerate(classes):
        members = np.flatnonzero(labels == value)
        share = count // len(classes) + (1 if i < count % len(classes) else 0)
        chosen.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def accuracy_table(scores: dict[str, dict[str, dict]], perturbations: Sequence[str]) -> tuple[np.ndarray, list, list]:
    """(accuracy matrix, models, perturbation names): the arguments of `plots.heatmap_png`."""
    models = list(scores)
    return np.array([[scores[m][p]["accuracy"] for p in perturbations] for m in models]), models, list(perturbations)


def markdown_table(scores: dict[str, dict[str, dict]], perturbations: Iterable[str]) -> str:
    """Accuracy and ROC-AUC with their intervals, one row per model, one column per perturbation."""
    perturbations = list(perturbations)
    lines = ["| model | " + " | ".join(perturbations) + " |", "|---|" + "---|" * len(perturbations)]
    for model, by_name in scores.items():
        cells = []
        for name in perturbations:
            s = by_name[name]
            acc, (alo, ahi) = s["accuracy"], s["accuracy_ci"]
            auc, ci = s["roc_auc"], s["roc_auc_ci"]
            auc_text = "n/a" if auc is None else f"{auc:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")
            cells.append(f"acc {acc:.3f} [{alo:.3f}, {ahi:.3f}]<br>AUC {auc_text}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
