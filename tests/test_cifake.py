"""Reading, checking and decoding Kaggle-layout archives, with every kind of bad input named in the error."""

import io
import zipfile

import numpy as np
import pytest
from cifake_fixture import cifake_files, jpeg_bytes, write_zip
from PIL import Image

from realfake import cifake
from realfake.errors import DataError


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
    summary = cifake.summarize(decode_zip(cifake_zip))
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
    with pytest.raises(DataError, match=r"train/REAL/bad\.jpg is not a readable image"):
        decode_zip(_with_bad_image(tmp_path, b"this is not an image"))


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


def test_folder_source_reads_like_zip(tmp_path):
    for name, data in cifake_files(per_folder=3, duplicates=0).items():
        (tmp_path / "ds" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / name).write_bytes(data)
    raw = cifake.decode_entries(cifake.read_folder(tmp_path / "ds"))
    assert len(raw.images) == 12 and raw.count("test", "FAKE") == 3
