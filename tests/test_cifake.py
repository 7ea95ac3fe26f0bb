"""Reading, checking and decoding Kaggle-layout archives, with every kind of bad input named in the error."""

import io
import signal
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from cifake_fixture import cifake_files, jpeg_bytes, write_zip
from PIL import Image

from realfake.data import cifake
from realfake.data.summary import summarize
from realfake.errors import DataError
from realfake.pipeline.process import on_sigterm


def decode_zip(path):
    return cifake.decode_entries(cifake.read_zip(path))


def test_reads_layout_counts_and_pixels(cifake_zip):
    raw = decode_zip(cifake_zip)
    assert raw.images.shape == (24 * 4 + 2, 32, 32, 3) and raw.images.dtype == np.uint8
    assert raw.count("train", "FAKE") == 26 and raw.count("test", "REAL") == 24
    # Decoding matches Pillow bit for bit, so prediction-time decoding sees the same pixels as training.
    with zipfile.ZipFile(cifake_zip) as zf:
        for i in (0, 50, 97):
            expected = np.asarray(Image.open(io.BytesIO(zf.read(str(raw.names[i])))))
            np.testing.assert_array_equal(raw.images[i], expected)


def test_top_folder_prefix_is_accepted(tmp_path):
    raw = decode_zip(write_zip(tmp_path / "a.zip", cifake_files(per_folder=3, duplicates=0), prefix="cifake/"))
    assert len(raw.images) == 12 and all(not n.startswith("cifake/") for n in raw.names)


def test_summary_counts_duplicates(cifake_zip):
    summary = summarize(decode_zip(cifake_zip))
    assert summary["counts"]["train"] == {"REAL": 24, "FAKE": 26}
    assert summary["duplicates"]["extra_copies_within_folder"]["train/FAKE"] == 2
    assert summary["duplicates"]["train_test_overlap"] == 0


def test_digests_identify_identical_pixels():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[2, 0, 0, 0] = 1
    d = cifake.pixel_digests(images)
    assert d[0] == d[1] and d[0] != d[2]


# ----------------------------------------------------------------------------- bad archives


def test_truncated_zip(tmp_path, cifake_zip):
    data = cifake_zip.read_bytes()
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.zip: not a readable zip archive.*Download it again"):
        cifake.read_zip(bad)


def test_missing_archive(tmp_path):
    with pytest.raises(DataError, match="not found"):
        cifake.read_zip(tmp_path / "nope.zip")


@pytest.mark.parametrize("entry", ["../evil.jpg", "/abs/evil.jpg", "train/REAL/../../evil.jpg"])
def test_zip_slip_entries_are_refused(tmp_path, entry):
    files = cifake_files(per_folder=2, duplicates=0) | {entry: b"x"}
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name exactly as given
    with pytest.raises(DataError, match="zip-slip"):
        cifake.read_zip(path)


def test_missing_class_folder(tmp_path):
    files = {k: v for k, v in cifake_files(per_folder=2).items() if not k.startswith("test/FAKE")}
    with pytest.raises(DataError, match="test/FAKE is missing"):
        cifake.read_zip(write_zip(tmp_path / "a.zip", files))


def test_empty_class_folder(tmp_path):
    files = {k: v for k, v in cifake_files(per_folder=2).items() if not k.startswith("train/REAL")}
    with pytest.raises(DataError, match="train/REAL is empty"):
        cifake.read_zip(write_zip(tmp_path / "a.zip", files, dirs=("train/REAL",)))


def _with_bad_image(tmp_path, data: bytes, name="train/REAL/bad.jpg"):
    return write_zip(tmp_path / "bad.zip", cifake_files(per_folder=2, duplicates=0) | {name: data})


def test_corrupt_jpeg_is_named(tmp_path):
    good = jpeg_bytes(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"train/REAL/bad\.jpg is not a readable image"):
        decode_zip(_with_bad_image(tmp_path, good[: len(good) // 2]))


def test_text_file_named_jpg_is_named(tmp_path):
    archive = _with_bad_image(tmp_path, b"this is not an image")
    with pytest.raises(DataError, match=r"train/REAL/bad\.jpg is not a readable image") as info:
        decode_zip(archive)
    message = str(info.value)
    assert str(archive) in message and "this is not" in message  # the archive, and what the file holds
    assert "object at 0x" not in message  # Pillow's text names an io.BytesIO, not the entry


def test_wrong_size_is_named(tmp_path):
    with pytest.raises(DataError, match=r"bad\.jpg is 64x48 pixels, expected 32x32"):
        decode_zip(_with_bad_image(tmp_path, jpeg_bytes(np.zeros((48, 64, 3), np.uint8))))


def test_grayscale_is_named(tmp_path):
    with pytest.raises(DataError, match=r"bad\.jpg is grayscale \(mode L\), expected RGB"):
        decode_zip(_with_bad_image(tmp_path, jpeg_bytes(np.zeros((32, 32), np.uint8))))


def test_rgba_is_named(tmp_path):
    rgba = jpeg_bytes(np.zeros((32, 32, 4), np.uint8), format="PNG")
    with pytest.raises(DataError, match=r"bad\.png is RGBA"):
        decode_zip(_with_bad_image(tmp_path, rgba, name="train/REAL/bad.png"))


def _folder_source(tmp_path, files):
    for name, data in files.items():
        (tmp_path / "ds" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / name).write_bytes(data)
    return tmp_path / "ds"


def test_folder_source_reads_like_zip(tmp_path):
    raw = cifake.decode_entries(cifake.read_folder(_folder_source(tmp_path, cifake_files(per_folder=3, duplicates=0))))
    assert len(raw.images) == 12 and raw.count("test", "FAKE") == 3


# ----------------------------------------------------------------------------- oversized images (zip bombs)


def _write_with_zeros(path, name: str, size: int):
    """A valid small CIFAKE zip plus `name` holding `size` zeros, deflated while streamed: the test stays small."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for member, data in cifake_files(per_folder=2, duplicates=0).items():
            zf.writestr(member, data)
        with zf.open(name, "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(size // len(block)):
                out.write(block)
    return path


def _understate_size(path, name: str, size: int) -> None:
    """Make the central directory (what ZipInfo.file_size reports) declare `size` bytes for `name`."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while data[at + 46 : at + 46 + struct.unpack_from("<H", data, at + 28)[0]] != name.encode():
        at = data.find(b"PK\x01\x02", at + 4)
        assert at >= 0, f"{name} not in the central directory"
    struct.pack_into("<I", data, at + 24, size)
    path.write_bytes(bytes(data))


def test_zip_bomb_is_refused_before_reading(tmp_path, monkeypatch):
    archive = _write_with_zeros(tmp_path / "bomb.zip", "train/REAL/bomb.jpg", 64 << 20)
    assert archive.stat().st_size < 1 << 20  # 64 MiB of zeros deflate to a few hundred KB

    def no_reading(*args, **kwargs):
        raise AssertionError("an entry was read before its declared size was checked")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    with pytest.raises(DataError, match=r"bomb\.zip: train/REAL/bomb\.jpg is 67108864 bytes, over the 1048576-byte"):
        cifake.read_zip(archive)


def test_reading_a_bomb_stops_after_the_cap(tmp_path):
    """Even when the size check is skipped (an Entry made by hand), a read inflates little more than the cap."""
    archive = _write_with_zeros(tmp_path / "bomb.zip", "train/REAL/bomb.jpg", 64 << 20)
    entry = cifake.Entry("train/REAL/bomb.jpg", 0, 0, str(archive), "train/REAL/bomb.jpg", 1000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb\.zip: train/REAL/bomb\.jpg is larger than the 1048576-byte"):
            entry.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading allocated {peak} bytes at its peak"


def test_understated_size_is_refused_by_name(tmp_path):
    """A header may lie: 2 MiB of zeros declared as 1000 bytes pass the size check, yet are refused by name."""
    files = cifake_files(per_folder=2, duplicates=0) | {"train/REAL/bomb.jpg": bytes(2 << 20)}
    archive = write_zip(tmp_path / "liar.zip", files)
    _understate_size(archive, "train/REAL/bomb.jpg", 1000)
    entries = cifake.read_zip(archive)
    with pytest.raises(DataError, match=r"liar\.zip: 1 image\(s\).*train/REAL/bomb\.jpg could not be read"):
        cifake.decode_entries(entries, workers=1)


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_reads_stop_at_the_cap(tmp_path, monkeypatch, kind):
    """Every read is bounded, whatever the size checked up front said: here the cap drops after listing."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    files = cifake_files(per_folder=2, duplicates=0) | {"train/REAL/big.png": jpeg_bytes(noise, format="PNG")}
    if kind == "zip":
        entries, source = cifake.read_zip(write_zip(tmp_path / "a.zip", files)), tmp_path / "a.zip"
    else:
        source = _folder_source(tmp_path, files)
        entries = cifake.read_folder(source)
    monkeypatch.setattr(cifake, "MAX_IMAGE_BYTES", 2048)  # the PNG of noise is about 3 KB, the JPEGs under 1 KB
    big = next(e for e in entries if e.name.endswith("big.png"))
    with pytest.raises(DataError, match=r"train/REAL/big\.png is larger than the 2048-byte limit"):
        big.read()
    with pytest.raises(DataError, match=r"1 image\(s\).*train/REAL/big\.png is larger than the 2048-byte") as info:
        cifake.decode_entries(entries, workers=1)
    assert str(info.value).startswith(f"{source}: ")


def test_oversized_loose_file_is_refused(tmp_path):
    root = _folder_source(tmp_path, cifake_files(per_folder=2, duplicates=0))
    with open(root / "test/FAKE/huge.jpg", "wb") as fh:
        fh.truncate(2 << 20)  # sparse: takes no disk space
    with pytest.raises(DataError, match=r"ds: test/FAKE/huge\.jpg is 2097152 bytes, over the 1048576-byte limit"):
        cifake.read_folder(root)


def test_decoding_workers_end_quietly_under_the_stages_sigterm_handler(tmp_path, capfd):
    """Forked decoders inherit the stage's raising SIGTERM handler; the pool's terminate() must not print tracebacks."""
    archive = write_zip(tmp_path / "big.zip", cifake_files(per_folder=600, duplicates=0))
    previous = signal.getsignal(signal.SIGTERM)
    on_sigterm()
    try:
        for _ in range(5):  # a worker prints only when the signal catches it in Python code: give it chances
            raw = cifake.decode_entries(cifake.read_zip(archive), workers=2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(raw.images) == 2400
    assert "Traceback" not in capfd.readouterr().err


def _png_bomb() -> bytes:
    """A PNG header that declares 100000x100000 pixels (far past Pillow's limit), with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def _hostile_zip(path, case: str, per_folder: int):
    """A CIFAKE zip with one hostile entry, train/REAL/hostile.*: encrypted, in an unsupported compression method, or a
    PNG decompression bomb."""
    files = cifake_files(per_folder=per_folder, duplicates=0)
    name = "train/REAL/hostile.png" if case == "bomb" else "train/REAL/hostile.jpg"
    write_zip(path, files | {name: _png_bomb() if case == "bomb" else files["train/REAL/0000 (0).jpg"]})
    if case in ("encrypted", "compression"):
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name)
        central = data.rindex(b"PK\x01\x02")  # the last directory record: the hostile entry, written last
        assert data[central + 46 : central + 46 + len(name)] == name.encode()
        if case == "encrypted":  # general-purpose flag bit 0, in the local header and the central directory
            for flags in (info.header_offset + 6, central + 8):
                data[flags] |= 0x01
        else:  # method 97 (WavPack), which zipfile cannot decompress
            for method in (info.header_offset + 8, central + 10):
                data[method : method + 2] = struct.pack("<H", 97)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("pooled", [False, True], ids=["main-process", "worker-pool"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("encrypted", r"hostile\.jpg could not be read \(.*encrypted.*\); repack the archive without a password"),
        ("compression", r"hostile\.jpg could not be read \(.*compression.*\); repack the archive with deflate"),
        ("bomb", r"hostile\.png declares too many pixels to decode \(.*\), expected 32x32"),
    ],
)
def test_hostile_entries_get_one_line_by_name(tmp_path, capfd, case, message, pooled):
    archive = _hostile_zip(tmp_path / f"{case}.zip", case, per_folder=600 if pooled else 4)
    with pytest.raises(DataError, match=message) as info:
        cifake.decode_entries(cifake.read_zip(archive), workers=2 if pooled else 1)
    assert "\n" not in str(info.value) and str(archive) in str(info.value)
    assert "Traceback" not in capfd.readouterr().err
