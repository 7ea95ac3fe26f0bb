"""Tiny synthetic CIFAKE archives in Kaggle's layout, and ways to break them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUT = ("train/REAL", "train/FAKE", "test/REAL", "test/FAKE")


def jpeg_bytes(pixels: np.ndarray, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    mode = {2: "L", 3: "RGB"}[pixels.ndim] if pixels.shape[-1] != 4 else "RGBA"
    Image.fromarray(pixels, mode=mode).save(buf, format=save_kwargs.pop("format", "JPEG"), **save_kwargs)
    return buf.getvalue()


def synthetic_image(rng: np.random.Generator, fake: bool) -> np.ndarray:
    """Real: smooth colour gradients; fake: the same plus a high-frequency checker, so tiny models can learn."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    colour = rng.uniform(40, 215, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    image = colour + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 4, size=(32, 32, 3))
    if fake:
        image += 18 * ((np.indices((32, 32)).sum(0) % 2)[..., None] - 0.5)
    return np.clip(image, 0, 255).astype(np.uint8)


def cifake_files(per_folder: int = 24, seed: int = 0, duplicates: int = 2) -> dict[str, bytes]:
    """{archive name: JPEG bytes} for each folder; `duplicates` pixel-identical pairs in train/FAKE (as in CIFAKE)."""
    rng = np.random.default_rng(seed)
    files = {}
    for folder in LAYOUT:
        fake = folder.endswith("FAKE")
        for i in range(per_folder):
            files[f"{folder}/{i:04d} ({i % 10}).jpg"] = jpeg_bytes(synthetic_image(rng, fake), quality=75)
    for i in range(duplicates):
        files[f"train/FAKE/dup{i}.jpg"] = files[f"train/FAKE/{i:04d} ({i % 10}).jpg"]
    return files


def write_zip(path: Path, files: dict[str, bytes], *, prefix: str = "", dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(prefix + d.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return path
