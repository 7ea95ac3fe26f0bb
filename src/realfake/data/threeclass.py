"""Data for the 3-class retrain: real / Stable Diffusion fake / DCGAN fake (pure functions on arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from realfake.data.prepare import Split, augment, shuffled
from realfake.errors import DataError

# The kinds of image a test source can hold, and the 3-class model's labels (0 real, 1 Stable Diffusion, 2 DCGAN).
THREE_CLASSES = ("real", "sd_fake", "dcgan_fake")


def three_class_splits(
    train: Split,
    val: Split,
    dcgan_images: np.ndarray,
    *,
    val_fraction: float,
    augmentations: Sequence[str],
    seed: int,
) -> tuple[Split, Split]:
    """Binary prepared splits (0 real, 1 SD fake) plus DCGAN train images as class 2, with their own validation.

    The DCGAN images get the same fixed augmented copies as the prepared train split, so no class differs from
    another by how it was augmented.
    """
    if tuple(train.class_names) != ("real", "fake"):
        raise DataError(f"prepared split has classes {train.class_names}, expected ('real', 'fake')")
    if len(dcgan_images) < 2:
        raise DataError(f"need at least 2 DCGAN train images for a train/validation split, got {len(dcgan_images)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dcgan_images))
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    dcgan_val, dcgan_train = dcgan_images[order[:n_val]], dcgan_images[order[n_val:]]
    dcgan_train, dcgan_train_labels = augment(dcgan_train, np.full(len(dcgan_train), 2, np.uint8), augmentations)

    def joined(split: Split, extra: np.ndarray, extra_labels: np.ndarray) -> Split:
        images = np.concatenate([split.images, extra])
        labels = np.concatenate([split.labels.astype(np.uint8), extra_labels])
        return Split(*shuffled(images, labels, rng), THREE_CLASSES)

    return (
        joined(train, dcgan_train, dcgan_train_labels),
        joined(val, dcgan_val, np.full(len(dcgan_val), 2, np.uint8)),
    )
