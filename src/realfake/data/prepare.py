"""Sample, split, augment and shuffle decoded CIFAKE arrays (pure functions on numpy arrays).

Hygiene: pixel-identical duplicates are collapsed to one copy before sampling, so no image (or its twin) can sit on
both sides of the train/validation split; train images that also occur in the test split can be dropped; the test
split is passed through untouched and never informs any choice here.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from realfake.data.cifake import CLASSES, SPLITS, RawDataset
from realfake.errors import DataError, ParamsError

log = logging.getLogger(__name__)

CLASS_NAMES = ("real", "fake")  # label 0 = CIFAKE REAL, 1 = CIFAKE FAKE (Stable Diffusion 1.4)

AUGMENTATIONS = {  # one per name of params.Augmentation
    "rot90": lambda images: np.rot90(images, k=1, axes=(1, 2)),
    "hflip": lambda images: images[:, :, ::-1],
}


@dataclasses.dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) uint8, index into class_names
    class_names: tuple[str, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"images": self.images, "labels": self.labels, "class_names": np.array(self.class_names)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Split:
        return cls(arrays["images"], arrays["labels"], tuple(str(c) for c in arrays["class_names"]))

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.labels == i)) for i, name in enumerate(self.class_names)}


def check_split(split: Split, *, image_shape: tuple[int, int, int], source: str) -> None:
    """Refuse arrays a model cannot take, naming the file and the stage that rebuilds it."""
    images = split.images
    if images.ndim != 4 or images.shape[1:] != image_shape or images.dtype != np.uint8:
        raise DataError(
            f"{source}: images are {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, image_shape))}"
            f"); rebuild it with `dvc repro prepare` (or check base.image_size)"
        )
    if len(split.labels) != len(images) or len(images) == 0:
        raise DataError(f"{source}: {len(images)} images but {len(split.labels)} labels; rebuild it with `dvc repro`")
    if split.labels.max() >= len(split.class_names):
        raise DataError(f"{source}: label {split.labels.max()} outside class_names {list(split.class_names)}")


def unique_indices(digests: np.ndarray, candidates: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Indices from `candidates` keeping the first of each pixel-identical group and none whose digest is excluded."""
    _, first = np.unique(digests[candidates], return_index=True)
    kept = candidates[np.sort(first)]
    if len(exclude):
        kept = kept[~np.isin(digests[kept], exclude)]
    return kept


def train_pool(raw: RawDataset, *, drop_test_overlap: bool) -> tuple[dict[int, np.ndarray], dict]:
    """Per class, the indices of distinct train images available for sampling, and what was removed."""
    train_index, digests = SPLITS.index("train"), raw.digests
    test_digests = digests[raw.split == SPLITS.index("test")]
    exclude = test_digests if drop_test_overlap else test_digests[:0]
    pool, report = {}, {}
    for label, cls_name in enumerate(CLASSES):
        candidates = np.flatnonzero((raw.split == train_index) & (raw.label == label))
        distinct = unique_indices(digests, candidates, test_digests[:0])
        kept = unique_indices(digests, candidates, exclude)
        pool[label] = kept
        report[cls_name] = {
            "train_images": int(len(candidates)),
            "duplicate_copies_removed": int(len(candidates) - len(distinct)),
            "test_overlap_removed": int(len(distinct) - len(kept)),
            "available": int(len(kept)),
        }
    return pool, report


def check_per_class(per_class: int, pool: dict[int, np.ndarray], *, key: str = "prepare.per_class") -> None:
    smallest = min(len(v) for v in pool.values())
    if per_class > smallest:
        available = ", ".join(f"{CLASSES[k]}: {len(v)}" for k, v in pool.items())
        raise ParamsError(
            f"{key}: {per_class} is more than the distinct train images available per class "
            f"({available}); set {key} to at most {smallest}"
        )


def sample_and_split(
    pool: dict[int, np.ndarray], *, per_class: int | str, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `per_class` indices per class and divide them into train and validation, stratified by class.

    `per_class` "all" takes as many as the smallest class has, so the classes stay balanced."""
    if per_class == "all":
        per_class = min(len(v) for v in pool.values())
    check_per_class(per_class, pool)
    n_val = max(1, round(per_class * val_fraction))
    if n_val >= per_class:
        raise ParamsError(f"prepare.val_fraction: leaves no training images with per_class={per_class}")
    train, val = [], []
    for label in sorted(pool):
        chosen = rng.choice(pool[label], size=per_class, replace=False)
        val.append(chosen[:n_val])
        train.append(chosen[n_val:])
    return np.concatenate(train), np.concatenate(val)


def augment(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The originals plus, for each named augmentation, one transformed copy of every image (as the reference study
    does)."""
    copies = [images] + [AUGMENTATIONS[n](images) for n in names]
    return np.concatenate(copies), np.tile(labels, len(copies))


def shuffled(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(images))
    return images[order], labels[order]


def prepare_splits(
    raw: RawDataset,
    *,
    per_class: int | str,
    val_fraction: float,
    augmentations: Sequence[str],
    drop_test_overlap: bool,
    seed: int,
) -> tuple[dict[str, Split], dict]:
    """Train (sampled, augmented, shuffled), validation (sampled, shuffled) and test (all of CIFAKE's test split)."""
    rng = np.random.default_rng(seed)
    pool, pool_report = train_pool(raw, drop_test_overlap=drop_test_overlap)
    train_idx, val_idx = sample_and_split(pool, per_class=per_class, val_fraction=val_fraction, rng=rng)
    train_images, train_labels = augment(raw.images[train_idx], raw.label[train_idx], augmentations)
    test_idx = np.flatnonzero(raw.split == SPLITS.index("test"))
    splits = {
        "train": Split(*shuffled(train_images, train_labels, rng), CLASS_NAMES),
        "val": Split(*shuffled(raw.images[val_idx], raw.label[val_idx], rng), CLASS_NAMES),
        "test": Split(raw.images[test_idx], raw.label[test_idx], CLASS_NAMES),
    }
    report = {
        "counts": {name: split.counts() for name, split in splits.items()},
        "sizes": {name: int(len(split.labels)) for name, split in splits.items()},
        "train_pool": pool_report,
        "sampled_per_class": int(len(train_idx) + len(val_idx)) // len(pool),
        "val_per_class": int(len(val_idx) // len(pool)),
        "augmentations": list(augmentations),
    }
    return splits, report


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


def load_split(path: Path, *, image_size: int) -> Split:
    """A prepared split file (train, val or test .npz), checked to hold uint8 RGB images of `image_size` pixels."""
    from realfake.fileio import load_arrays

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared split not found; make it with `dvc repro prepare`")
    try:
        split = Split.from_arrays(load_arrays(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # not an .npz, cut off, or arrays missing
        raise DataError(
            f"{path}: not a readable prepared split ({type(exc).__name__}: {exc}); rebuild it with `dvc repro prepare`"
        ) from exc
    check_split(split, image_shape=(image_size, image_size, 3), source=str(path))
    return split
