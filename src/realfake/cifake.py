"""CIFAKE in Kaggle's layout (`train|test` / `REAL|FAKE` / *.jpg): read, check and decode into uint8 arrays.

The decoded form is one flat table: `images` (N, 32, 32, 3) uint8, `split` and `label` codes, and `names`
(the path inside the archive), so every later stage reads compact arrays and never touches a JPEG again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import zipfile
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


@dataclasses.dataclass
class Entry:
    """One image file of the archive: where it sits and its raw bytes."""

    name: str  # path relative to the dataset root, e.g. "train/REAL/0000 (10).jpg"
    split: int  # index into SPLITS
    label: int  # index into CLASSES
    data: bytes


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


def _entry_name(name: str) -> str:
    """Name relative to the dataset root, so archives with and without a top folder agree."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[-3:])


def read_zip(path: Path) -> list[Entry]:
    """Read every image entry of a Kaggle-layout zip into memory (CIFAKE: about 1 KB each)."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                check_member_name(info.filename, source)
            chosen, folders = _select([i.filename for i in infos], source)
            _check_layout(chosen, folders, source)
            entries = []
            for info in tqdm(infos, desc="reading archive", unit="file", mininterval=1, leave=False):
                if info.filename in chosen:
                    s, c = chosen[info.filename]
                    entries.append(Entry(_entry_name(info.filename), s, c, zf.read(info)))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{source}: not a readable zip archive ({exc}); is the file truncated? Download it again.")
    except (EOFError, zipfile.LargeZipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"{source}: archive not found") from None
        raise DataError(f"{source}: archive is truncated or damaged ({exc}); download it again") from None
    return entries


def read_folder(root: Path) -> list[Entry]:
    """Read a Kaggle-layout folder (what kagglehub leaves in its cache)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    files = [p for p in root.rglob("*") if p.is_file()]
    rel = {p.relative_to(root).as_posix(): p for p in files}
    dirs = [p.relative_to(root).as_posix() + "/" for p in root.rglob("*") if p.is_dir()]
    chosen, folders = _select([*rel, *dirs], str(root))
    _check_layout(chosen, folders, str(root))
    return [
        Entry(_entry_name(name), *chosen[name], rel[name].read_bytes())
        for name in tqdm(sorted(chosen), desc="reading folder", unit="file", mininterval=1, leave=False)
    ]


# ----------------------------------------------------------------------------- decoding


def _image_problem(entry: Entry) -> str | None:
    """Say in words why an image is not a 32x32 RGB picture, or None (Pillow gives the best diagnosis)."""
    try:
        with Image.open(io.BytesIO(entry.data)) as im:
            im.load()
            if im.mode != "RGB":
                kind = {"L": "grayscale", "RGBA": "RGBA (has an alpha channel)", "P": "palette", "1": "1-bit"}
                return f"is {kind.get(im.mode, im.mode)} (mode {im.mode}), expected RGB"
            if im.size != IMAGE_SHAPE[:2]:
                return f"is {im.size[0]}x{im.size[1]} pixels, expected 32x32"
            return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"is not a readable image ({exc})"


def _bad_images_error(problems: list[tuple[str, str]]) -> DataError:
    details = "; ".join(f"{name} {problem}" for name, problem in problems[:5])
    return DataError(
        f"{len(problems)} image(s) are not 32x32 RGB JPEGs: {details}. "
        f"Remove or replace them, or download the dataset again."
    )


def _decode_one(tf, data):
    # INTEGER_ACCURATE is libjpeg's ISLOW IDCT, what Pillow uses: pixels here equal Pillow's bit for bit, so
    # images decoded later for prediction look exactly like the training data.
    image = tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")
    ok = tf.reduce_all(tf.equal(tf.shape(image), IMAGE_SHAPE))
    return ok, tf.cond(ok, lambda: tf.reshape(image, IMAGE_SHAPE), lambda: tf.zeros(IMAGE_SHAPE, tf.uint8))


def decode_entries(entries: list[Entry]) -> RawDataset:
    """Decode all images on every core; any image that is not 32x32 RGB raises DataError naming the file."""
    import tensorflow as tf

    n = len(entries)
    images = np.empty((n, *IMAGE_SHAPE), np.uint8)
    ok = np.zeros(n, bool)
    batch = 2048
    pipeline = (
        tf.data.Dataset.from_tensor_slices([e.data for e in entries])
        .map(lambda d: _decode_one(tf, d), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch)
        .prefetch(2)
    )
    try:
        with tqdm(total=n, desc="decoding images", unit="img", mininterval=1, leave=False) as bar:
            for i, (good, pixels) in enumerate(pipeline):
                images[i * batch : i * batch + len(good)] = pixels.numpy()
                ok[i * batch : i * batch + len(good)] = good.numpy()
                bar.update(len(good))
    except tf.errors.InvalidArgumentError as exc:
        # The fast path stops at the first undecodable file without naming it: find every culprit by name.
        problems = [(e.name, p) for e in entries if (p := _image_problem(e))]
        raise _bad_images_error(problems or [("(unknown file)", f"could not be decoded: {exc.message}")]) from None
    if not ok.all():
        bad = [entries[i] for i in np.flatnonzero(~ok)]
        raise _bad_images_error([(e.name, _image_problem(e) or "is not 32x32 RGB") for e in bad])
    return RawDataset(
        images=images,
        split=np.array([e.split for e in entries], np.uint8),
        label=np.array([e.label for e in entries], np.uint8),
        names=np.array([e.name for e in entries]),
        digests=pixel_digests(images),
    )


# ----------------------------------------------------------------------------- duplicates and summary


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """A 128-bit digest per image of its pixels (dtype S16): equal digests mean pixel-identical images."""
    flat = images.reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat], dtype="S16")


def summarize(raw: RawDataset) -> dict:
    """Counts per split and class, and pixel-identical duplicates: within a folder, across classes, train-test."""
    digests = raw.digests
    counts = {split: {c: raw.count(split, c) for c in CLASSES} for split in SPLITS}
    duplicates = {}
    for s, split in enumerate(SPLITS):
        for c, cls_name in enumerate(CLASSES):
            group = digests[(raw.split == s) & (raw.label == c)]
            duplicates[f"{split}/{cls_name}"] = int(len(group) - len(np.unique(group)))
    train = set(digests[raw.split == 0])
    test = set(digests[raw.split == 1])
    real = set(digests[raw.label == 0])
    fake = set(digests[raw.label == 1])
    return {
        "images": int(len(raw.images)),
        "counts": counts,
        "duplicates": {
            "extra_copies_within_folder": duplicates,
            "train_test_overlap": len(train & test),
            "real_fake_overlap": len(real & fake),
        },
    }
