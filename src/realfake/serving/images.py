"""Image sources: finding image files in folders, and decoding any picture into exactly what the models were trained
on, 32x32 (the model's input size) RGB uint8 pixels.

Images that already have the model's size are NOT resampled, so a CIFAKE JPEG gives the very pixels `prepare`
decoded from it. A large image is reduced while it is decoded (JPEG's DCT scaling, Pillow's draft mode) or right
after (a box filter), down to a few times the model's size, before it becomes an array: memory stays that of a small
image whatever the photo's size. Files that cannot be read are reported, never guessed at.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from realfake.data.images import fit, to_rgb
from realfake.errors import RealfakeError

# Files a folder is searched for (lower-case suffixes); a file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Decompression-bomb guard: 50 megapixels (an 8660x5773 photo, ~150 MB decoded as RGB) is far above any photo a
# 32x32 detector needs and keeps a hostile file from exhausting memory. Pillow's own guard (Image.MAX_IMAGE_PIXELS,
# which the CLI sets to this) checks the header inside Image.open; load_image checks again, so it holds for any
# caller.
MAX_PIXELS = 50_000_000

# A large image is first reduced (exactly by an integer factor) to no less than this many times the model's side,
# then cropped and resized with LANCZOS (`data.images.fit`): the last step still sees 4 source pixels per output
# pixel, while the decoded array is a few hundred kB instead of, for a 7000x7000 photo, 147 MB.
REDUCE_MARGIN = 4
_REDUCIBLE_MODES = frozenset({"RGB", "L"})  # reduced before `to_rgb` (others are converted first: alpha, 16-bit)


class UnreadableImageError(RealfakeError):
    """One file cannot be classified (not an image, damaged, too large); the others still can.

    `kind`: "format" (not an image Pillow reads), "size" (over the pixel limit), "damaged", or "file" (missing, not
    a regular file)."""

    def __init__(self, message: str, kind: str = "damaged"):
        super().__init__(message)
        self.kind = kind


def display_path(path: Path | str) -> str:
    """A path as text that any terminal or JSON reader takes: undecodable bytes of a file name become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_regular_file(path: Path) -> bool:
    """True for a regular file (following symlinks): FIFOs, devices and sockets would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def find_images(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(path, problem)]): files as given, folders searched recursively for IMAGE_EXTENSIONS.

    Folder contents are sorted, so the output order is stable; a file reached twice is listed once.
    """
    found: dict[Path, None] = {}
    problems = []
    for path in map(Path, paths):
        if path.is_dir():
            in_folder, skipped = [], []
            for folder, _, names in os.walk(path):  # does not follow symlinked folders: no loops
                for name in names:
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        candidate = Path(folder) / name
                        (in_folder if is_regular_file(candidate) else skipped).append(candidate)
            problems += [(p, "not a regular file (a pipe, device or broken link); skipped") for p in sorted(skipped)]
            if not in_folder and not skipped:
                problems.append((path, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"))
            found.update(dict.fromkeys(sorted(in_folder)))
        elif is_regular_file(path):
            found[path] = None
        elif path.exists():
            problems.append((path, "not a regular file (a pipe, device or socket); skipped"))
        else:
            problems.append((path, "no such file or folder"))
    return list(found), problems


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """`items` `size` at a time."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reduced(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` (loaded) reduced by the largest integer factor that keeps it REDUCE_MARGIN times `size`, if any."""
    factor = min(image.width // (REDUCE_MARGIN * size[0]), image.height // (REDUCE_MARGIN * size[1]))
    return image.reduce(factor) if factor >= 2 else image


def decode(source, *, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, bool]:
    """(uint8 RGB (height, width, 3) pixels of `size` (width, height), whether the image was resampled) for a file
    path or a binary file object; see `data.images.to_rgb` and `fit`.

    The EXIF orientation is applied (as viewers show the photo); an animated GIF or multi-page TIFF gives its
    first frame. Raises UnreadableImageError saying why the image cannot be used.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > max_pixels:
                    raise UnreadableImageError(
                        f"{image.width}x{image.height} pixels is over the limit of {max_pixels:,} "
                        "(decompression bomb guard)",
                        "size",
                    )
                if image.size != size and image.format == "JPEG":
                    # DCT scaling by 1/2, 1/4 or 1/8 while decoding, keeping at least REDUCE_MARGIN x the model's size
                    image.draft(None, (REDUCE_MARGIN * size[0], REDUCE_MARGIN * size[1]))
                image.load()
                full = image if image.mode in _REDUCIBLE_MODES else to_rgb(image)
                small = _reduced(full, size)
                upright = ImageOps.exif_transpose(small)
                resampled = small is not full or upright.size != size
                pixels = np.asarray(fit(to_rgb(upright), size), dtype=np.uint8)
    except UnreadableImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImageError(f"too large ({exc})", "size") from exc
    except Image.UnidentifiedImageError as exc:
        raise UnreadableImageError("not an image format Pillow can read", "format") from exc
    except FileNotFoundError as exc:
        raise UnreadableImageError("no such file", "file") from exc
    except Exception as exc:  # noqa: BLE001  Pillow's decoders raise many types on damaged files (OSError,
        # SyntaxError, struct.error, IndexError, ...): any of them means this one file cannot be classified.
        raise UnreadableImageError(f"damaged or unsupported image ({type(exc).__name__}: {exc})") from exc
    return pixels, resampled


def load_image(path: Path, *, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, bool]:
    """`decode` for a file on disk: a pipe, device or missing file is refused before it is opened."""
    if not is_regular_file(path):
        raise UnreadableImageError("no such file" if not os.path.lexists(path) else "not a regular file", "file")
    return decode(path, size=size, max_pixels=max_pixels)


def decode_bytes(data: bytes, *, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, bool]:
    """`decode` for an image held in memory (an upload)."""
    if not data:
        raise UnreadableImageError("empty file", "format")
    return decode(io.BytesIO(data), size=size, max_pixels=max_pixels)
