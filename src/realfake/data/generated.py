"""The DCGAN's data: which images it learns from, how its fakes are stored, and grids of samples.

Generated images are stored exactly as CIFAKE stores its own (Pillow JPEG, quality 75, 4:2:0 chroma
subsampling), and consumers read the pixels decoded back from those JPEG bytes. Otherwise a classifier could
tell the DCGAN class apart by its encoding (no JPEG artefacts) instead of by what the generator draws.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from realfake.data.cifake import CLASSES, SPLITS, RawDataset
from realfake.errors import DataError

# Folder of the generated class inside the zip, beside CIFAKE's REAL and FAKE.
GENERATED_CLASS = "DCGAN"
# A fixed timestamp for every zip entry: the same images give the same archive bytes (and DVC hash).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Sample grids: pixels between tiles, their grey level, and an integer upscale so 32x32 tiles stay visible.
GRID_PADDING = 2
GRID_BACKGROUND = 255
GRID_SCALE = 2


# ----------------------------------------------------------------------------- training images


def real_train_images(raw: RawDataset) -> np.ndarray:
    """CIFAKE train/REAL images, each distinct picture once, none pixel-identical to a test image.

    The DCGAN must never see test images (the original notebook trained it on test/REAL), and a duplicate
    would only weigh one picture twice. Keeps the dataset's order (the first copy of each picture).
    """
    chosen = (raw.split == SPLITS.index("train")) & (raw.label == CLASSES.index("REAL"))
    test_digests = raw.digests[raw.split == SPLITS.index("test")]
    chosen &= ~np.isin(raw.digests, test_digests)
    indices = np.flatnonzero(chosen)
    _, first = np.unique(raw.digests[indices], return_index=True)
    return raw.images[indices[np.sort(first)]]


def dcgan_training_images(raw: RawDataset, *, count: int | None, seed: int, source: Path) -> np.ndarray:
    """A seeded sample of `count` `real_train_images` (all when None); a DataError naming `source` if there are none."""
    images = sample_images(real_train_images(raw), count=count, seed=seed)
    if not len(images):
        raise DataError(f"{source}: holds no train/REAL images to train the DCGAN on")
    return images


def sample_images(images: np.ndarray, *, count: int | None, seed: int) -> np.ndarray:
    """A seeded sample of `count` images in their original order (all of them when count is None or larger)."""
    if count is None or count >= len(images):
        return images
    chosen = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    return images[np.sort(chosen)]


# ----------------------------------------------------------------------------- JPEG storage


def encode_jpeg(image: np.ndarray, *, quality: int, subsampling: str) -> bytes:
    """One uint8 RGB image (H, W, 3) as JPEG bytes, written by Pillow as CIFAKE's files were."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def encode_jpegs(images: np.ndarray, *, quality: int, subsampling: str) -> list[bytes]:
    return [encode_jpeg(image, quality=quality, subsampling=subsampling) for image in images]


def decode_jpegs(blobs: Sequence[bytes]) -> np.ndarray:
    """JPEG bytes -> uint8 (N, H, W, 3): the pixels any reader of the stored files gets (Pillow's decoder)."""
    images = []
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            images.append(np.asarray(im.convert("RGB")))
    return np.stack(images)


def store_like_cifake(images: np.ndarray, *, quality: int, subsampling: str) -> tuple[list[bytes], np.ndarray, dict]:
    """Generated uint8 images stored as CIFAKE stores its own: (JPEG bytes, the pixels they decode to, a report of
    their count, mean size and what JPEG changed). Consumers get the decoded pixels, never the generator's output."""
    blobs = encode_jpegs(images, quality=quality, subsampling=subsampling)
    stored = decode_jpegs(blobs)
    sizes = np.array([len(b) for b in blobs])
    report = {
        "images": len(images),
        "mean_bytes": float(sizes.mean()) if len(sizes) else 0.0,
        # What JPEG changed: mean absolute difference in pixel levels 0..255.
        "jpeg_mean_abs_error": float(np.abs(stored.astype(np.int16) - images).mean()) if len(images) else 0.0,
    }
    return blobs, stored, report


def member_name(split: str, index: int) -> str:
    """Path of a generated image inside the zip, in CIFAKE's layout: train/DCGAN/00000.jpg."""
    return f"{split}/{GENERATED_CLASS}/{index:05d}.jpg"


def write_zip(target: Path | BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    """Store (name, bytes) pairs uncompressed (JPEG does not shrink further) with fixed timestamps."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)


def read_zip_split(path: Path, split: str) -> list[bytes]:
    """The JPEG bytes of one split of a generated zip, in index order."""
    prefix = f"{split}/{GENERATED_CLASS}/"
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(prefix))
        return [zf.read(n) for n in names]


# ----------------------------------------------------------------------------- sample grids


def sample_grid(images: np.ndarray, *, columns: int) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) into one uint8 picture, `columns` per row, padded and upscaled."""
    n, height, width, channels = images.shape
    rows = -(-n // columns)
    pad = GRID_PADDING
    grid = np.full((pad + rows * (height + pad), pad + columns * (width + pad), channels), GRID_BACKGROUND, np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid.repeat(GRID_SCALE, axis=0).repeat(GRID_SCALE, axis=1)


def save_png(image: np.ndarray, target: Path | BinaryIO) -> None:
    """Write a uint8 RGB picture as PNG (Pillow stores no timestamp: same pixels, same bytes)."""
    Image.fromarray(image).save(target, format="PNG")
