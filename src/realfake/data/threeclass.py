"""Data for the 3-class retrain: real / Stable Diffusion fake / DCGAN fake (pure functions on arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from realfake.data.cifake import CLASSES, RawDataset, pixel_digests
from realfake.data.prepare import CLASS_NAMES, Split, augment, check_per_class, shuffled, train_pool
from realfake.errors import DataError
from realfake.fileio import load_arrays

# The kinds of image a test source can hold, and the 3-class model's labels (0 real, 1 Stable Diffusion, 2 DCGAN).
THREE_CLASSES = ("real", "sd_fake", "dcgan_fake")


def load_dcgan_train(path: Path, *, image_size: int) -> np.ndarray:
    """The generated DCGAN train images (uint8), checked to be `image_size` pixels square."""
    if not path.is_file():
        raise DataError(f"{path}: DCGAN images not found; make them with `dvc repro generate`")
    images = load_arrays(path)["images"]
    if images.shape[1:] != (image_size, image_size, 3):
        raise DataError(f"{path}: images are {images.shape}, expected (N, {image_size}, {image_size}, 3)")
    return images


def archive_sample(
    raw: RawDataset, *, per_class: int, val: Split, drop_test_overlap: bool, seed: int
) -> tuple[Split, dict]:
    """`per_class` distinct CIFAKE train images per class, drawn (seeded) from the whole decoded archive instead of the
    prepared sample, for a 3-class retrain that needs more real and Stable Diffusion images than the binary models.

    None of them is pixel-identical to a validation image, nor to a test image when `drop_test_overlap`, so validation
    and test stay unseen. No augmented copies are stored: augment on the fly (models.<name>.augment) instead.
    """
    pool, _ = train_pool(raw, drop_test_overlap=drop_test_overlap)
    held_out = pixel_digests(val.images)
    pool = {label: kept[~np.isin(raw.digests[kept], held_out)] for label, kept in pool.items()}
    check_per_class(per_class, pool, key="train_3class.cifake_per_class")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(pool[label], size=per_class, replace=False) for label in sorted(pool)])
    images, labels = shuffled(raw.images[chosen], raw.label[chosen], rng)
    report = {CLASSES[label]: {"available": int(len(kept)), "drawn": per_class} for label, kept in pool.items()}
    return Split(images, labels, CLASS_NAMES), report


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
