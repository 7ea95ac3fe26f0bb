"""CIFAKE in Kaggle's layout (`train|test` / `REAL|FAKE` / *.jpg): read, check and decode into uint8 arrays.

The decoded form is one flat table: `images` (N, 32, 32, 3) uint8, `split` and `label` codes, and `names`
(the path inside the archive), so every later stage reads compact arrays and never touches a JPEG again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import mmap
import multiprocessing
import os
import re
import signal
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from realfake.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CLASSES = ("REAL", "FAKE")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SHAPE = (32, 32, 3)
# Most bytes one image file may hold. A CIFAKE JPEG is about 1 KB; the cap stops a zip bomb (a few MB that inflate
# to gigabytes) before it is read, and bounds every read in case a zip header understates the real size.
MAX_IMAGE_BYTES = 1 << 20


_OPEN_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}


def _zip_handle(path: str) -> zipfile.ZipFile:
    """One ZipFile per process: forked workers must not share a file offset with their parent."""
    key = (os.getpid(), path)
    if key not in _OPEN_ZIPS:
        _OPEN_ZIPS[key] = zipfile.ZipFile(path)
    return _OPEN_ZIPS[key]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image file of the dataset: where it sits, and where to read its bytes (read lazily, in workers)."""

    name: str  # path relative to the dataset root, e.g. "train/REAL/0000 (10).jpg"
    split: int  # index into SPLITS
    label: int  # index into CLASSES
    location: str  # the zip file, or the image file itself
    member: str | None  # the entry inside the zip; None for a loose file
    size: int  # bytes of the encoded image

    @property
    def source(self) -> str:
        """The archive, or the dataset folder, the entry belongs to (for messages)."""
        if self.member is None:
            return str(Path(self.location).parents[len(PurePosixPath(self.name).parts) - 1])
        return self.location

    def read(self) -> bytes:
        """The file's bytes; raises DataError, without reading further, once they pass MAX_IMAGE_BYTES."""
        if self.member is None:
            with open(self.location, "rb") as fh:
                data = fh.read(MAX_IMAGE_BYTES + 1)
        else:
            # zf.open streams and inflates only what is asked for; zf.read would inflate the whole entry first.
            with _zip_handle(self.location).open(self.member) as fh:
                data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise DataError(f"{self.source}: {self.name} {_too_large(None)}. Remove it, or download the dataset again.")
        return data


@dataclasses.dataclass
class RawDataset:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    split: np.ndarray  # (N,) uint8, index into SPLITS
    label: np.ndarray  # (N,) uint8, index into CLASSES
    names: np.ndarray  # (N,) str
    digests: np.ndarray  # (N,) S16, see pixel_digests

    def arrays(self) -> dict[str, np.ndarray]:
        return dataclasses.asdict(self)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RawDataset:
        return cls(**{f.name: arrays[f.name] for f in dataclasses.fields(cls)})

    def count(self, split: str, cls_name: str) -> int:
        return int(np.sum((self.split == SPLITS.index(split)) & (self.label == CLASSES.index(cls_name))))


# ----------------------------------------------------------------------------- layout


def check_member_name(name: str, archive: str) -> None:
    """Refuse zip entries that would escape an extraction folder (zip-slip)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing absolute entry {name!r} (possible zip-slip attack)")
    if ".." in path.parts:
        raise DataError(f"{archive}: refusing entry {name!r} containing '..' (possible zip-slip attack)")


def _place(parts: tuple[str, ...]) -> tuple[int, int, int] | None:
    """(prefix length, split, class) when a path looks like [prefix/]split/CLASS/file, else None."""
    if len(parts) < 3:
        return None
    split, cls_name = parts[-3], parts[-2]
    if split in SPLITS and cls_name in CLASSES:
        return len(parts) - 3, SPLITS.index(split), CLASSES.index(cls_name)
    return None


def _select(names: Iterable[str], source: str) -> tuple[dict[str, tuple[int, int]], set[tuple[int, int]]]:
    """Map image names to (split, class); also return the class folders present (even when empty)."""
    chosen: dict[str, tuple[int, int]] = {}
    folders: set[tuple[int, int]] = set()
    prefixes: set[tuple[str, ...]] = set()
    ignored = 0
    for name in names:
        parts = PurePosixPath(name).parts
        if name.endswith("/"):  # a directory entry: records that a class folder exists
            placed = _place((*parts, "_"))
            if placed:
                folders.add(placed[1:])
            continue
        placed = _place(parts)
        if placed is None or not name.lower().endswith(IMAGE_SUFFIXES) or "__MACOSX" in parts:
            ignored += 1
            continue
        prefixes.add(parts[: placed[0]])
        folders.add(placed[1:])
        chosen[name] = placed[1:]
    if len(prefixes) > 1:
        shown = ", ".join(sorted("/".join(p) or "." for p in prefixes))
        raise DataError(f"{source}: images sit under several roots ({shown}); expected one CIFAKE layout")
    if ignored:
        log.warning("%s: ignored %d entries outside train|test/REAL|FAKE/*.jpg", source, ignored)
    return chosen, folders


def _check_layout(chosen: dict[str, tuple[int, int]], folders: set[tuple[int, int]], source: str) -> None:
    counts = Counter(chosen.values())
    for s, split in enumerate(SPLITS):
        for c, cls_name in enumerate(CLASSES):
            if counts[(s, c)]:
                continue
            state = "is empty" if (s, c) in folders else "is missing"
            raise DataError(
                f"{source}: folder {split}/{cls_name} {state}; a CIFAKE archive needs images in each of "
                f"train/REAL, train/FAKE, test/REAL, test/FAKE"
            )


def _too_large(size: int | None) -> str:
    """What is wrong with an image file of `size` bytes (None: more than could be read) past MAX_IMAGE_BYTES."""
    amount = f"{size} bytes, over" if size is not None else "larger than"
    return (
        f"is {amount} the {MAX_IMAGE_BYTES}-byte limit for one image (a CIFAKE JPEG is about 1 KB); "
        f"refusing to read it, as it may be a zip bomb"
    )


def _check_sizes(sizes: dict[str, int], source: str) -> None:
    """Refuse, before anything is read, image files whose (declared) size is past MAX_IMAGE_BYTES."""
    big = [name for name, size in sizes.items() if size > MAX_IMAGE_BYTES]
    if big:
        more = f" (and {len(big) - 1} more)" if len(big) > 1 else ""
        raise DataError(
            f"{source}: {big[0]}{more} {_too_large(sizes[big[0]])}. Remove it, or download the dataset again."
        )


def _entry_name(name: str) -> str:
    """Name relative to the dataset root, so archives with and without a top folder agree."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[-3:])


def read_zip(path: Path) -> list[Entry]:
    """List the image entries of a Kaggle-layout zip after checking names and layout (bytes are read later)."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except FileNotFoundError:
        raise DataError(f"{source}: archive not found") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{source}: not a readable zip archive ({exc}); is it truncated? Download it again.") from None
    for info in infos:
        check_member_name(info.filename, source)
    chosen, folders = _select([i.filename for i in infos], source)
    _check_layout(chosen, folders, source)
    _check_sizes({i.filename: i.file_size for i in infos if i.filename in chosen}, source)
    resolved = str(Path(path).resolve())
    return [
        Entry(_entry_name(i.filename), *chosen[i.filename], resolved, i.filename, i.file_size)
        for i in infos
        if i.filename in chosen
    ]


def read_folder(root: Path) -> list[Entry]:
    """List the images of a Kaggle-layout folder (what kagglehub leaves in its cache)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    paths = list(root.rglob("*"))
    rel = {p.relative_to(root).as_posix(): p for p in paths if p.is_file()}
    dirs = [p.relative_to(root).as_posix() + "/" for p in paths if p.is_dir()]
    chosen, folders = _select([*rel, *dirs], str(root))
    _check_layout(chosen, folders, str(root))
    sizes = {name: rel[name].stat().st_size for name in sorted(chosen)}
    _check_sizes(sizes, str(root))
    return [Entry(_entry_name(name), *chosen[name], str(rel[name]), None, size) for name, size in sizes.items()]


# ----------------------------------------------------------------------------- decoding


def _reason(exc: Exception) -> str:
    """The exception's text without Python object reprs: Pillow names its input `<_io.BytesIO object at 0x...>`."""
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(exc))
    return re.sub(r"\s+", " ", text).strip() or type(exc).__name__


def _decode_into(entry: Entry, out: np.ndarray) -> str | None:
    """Decode one JPEG into `out`; return what is wrong with it instead when it is not 32x32 RGB.

    The problem is phrased to follow the entry's name, as in "train/REAL/x.jpg is grayscale (mode L), ..."."""
    try:
        data = entry.read()
    except DataError:  # past MAX_IMAGE_BYTES: reported with the others, the entry's name in front
        return _too_large(None)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        return f"could not be read ({_reason(exc)}); the archive is damaged: download it again"
    except NotImplementedError as exc:  # zipfile: "That compression method is not supported"
        return f"could not be read ({_reason(exc)}); repack the archive with deflate or no compression"
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required for extraction"
        return f"could not be read ({_reason(exc)}); repack the archive without a password"
    try:
        # A bomb-sized header is refused by its size below, never decoded: its warning would only add noise.
        with (
            warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning),
            Image.open(io.BytesIO(data)) as im,
        ):
            if im.mode != "RGB":
                kind = {"L": "grayscale", "RGBA": "RGBA (has an alpha channel)", "P": "palette", "1": "1-bit"}
                return f"is {kind.get(im.mode, im.mode)} (mode {im.mode}), expected RGB"
            if im.size != IMAGE_SHAPE[1::-1]:
                return f"is {im.size[0]}x{im.size[1]} pixels, expected 32x32"
            out[...] = np.asarray(im)
            return None
    except UnidentifiedImageError:
        return f"is not a readable image (not a JPEG or PNG; it starts with {data[:16]!r})"
    except Image.DecompressionBombError as exc:  # refused before any pixel is decoded
        return f"declares too many pixels to decode ({_reason(exc)}), expected 32x32"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"is not a readable image ({_reason(exc)})"


# Set by decode_entries before forking workers: they inherit these instead of receiving pickled copies.
_WORK: tuple[list[Entry], np.ndarray] | None = None


def _plain_worker_signals() -> None:
    """A forked worker inherits the stage's SIGTERM handler, which raises: the pool's own terminate() at the end
    would then print a traceback per worker. Workers die quietly instead, and leave Ctrl-C to the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_range(bounds: tuple[int, int]) -> list[tuple[int, str]]:
    entries, images = _WORK
    return [(i, p) for i in range(*bounds) if (p := _decode_into(entries[i], images[i]))]


def _bad_images_error(entries: list[Entry], problems: list[tuple[int, str]]) -> DataError:
    where = ", ".join(sorted({entries[i].source for i, _ in problems}))
    details = "; ".join(f"{entries[i].name} {problem}" for i, problem in problems[:5])
    return DataError(
        f"{where}: {len(problems)} image(s) are not usable 32x32 RGB JPEGs: {details}. "
        f"Remove or replace them, or download the dataset again."
    )


def decode_entries(entries: list[Entry], *, workers: int | None = None) -> RawDataset:
    """Read and decode all images with Pillow on every core; any that is not 32x32 RGB raises DataError by name.

    Workers are forked, read their own share of the files, and write straight into one shared anonymous mapping,
    so nothing is pickled and the decoded pixels exist once.
    """
    global _WORK
    n = len(entries)
    shared = mmap.mmap(-1, max(1, n * int(np.prod(IMAGE_SHAPE))))
    images = np.frombuffer(shared, np.uint8, count=n * int(np.prod(IMAGE_SHAPE))).reshape(n, *IMAGE_SHAPE)
    workers = workers or os.cpu_count() or 1
    chunk = 2000
    ranges = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    _WORK = (entries, images)
    problems: list[tuple[int, str]] = []
    try:
        bar = tqdm(total=n, desc="decoding images", unit="img", mininterval=1, leave=False, disable=None)
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods() and n > chunk:
            with multiprocessing.get_context("fork").Pool(workers, initializer=_plain_worker_signals) as pool:
                for (lo, hi), found in zip(ranges, pool.imap(_decode_range, ranges), strict=True):
                    problems += found
                    bar.update(hi - lo)
        else:
            for lo, hi in ranges:
                problems += _decode_range((lo, hi))
                bar.update(hi - lo)
        bar.close()
    finally:
        _WORK = None
    if problems:
        raise _bad_images_error(entries, problems)
    return RawDataset(
        images=images,
        split=np.array([e.split for e in entries], np.uint8),
        label=np.array([e.label for e in entries], np.uint8),
        names=np.array([e.name for e in entries]),
        digests=pixel_digests(images),
    )


# ----------------------------------------------------------------------------- duplicates


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """A 128-bit digest per image of its pixels (dtype S16): equal digests mean pixel-identical images."""
    flat = images.reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat], dtype="S16")
