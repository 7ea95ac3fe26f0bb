"""Tests for benchmarks/ship_archive.py, which carries a CIFAKE zip to a GPU host without network and decodes it."""

from __future__ import annotations

import json
import lzma
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cifake_fixture import cifake_files, write_zip

from realfake.data import cifake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ship_archive  # noqa: E402


def test_pack_and_unpack_keep_every_member_and_decode_like_the_download_stage(tmp_path):
    original = write_zip(tmp_path / "cifake.zip", cifake_files(per_folder=6))
    ship_archive.pack(original, tmp_path / "packed.xz")
    ship_archive.unpack(tmp_path / "packed.xz", tmp_path / "rebuilt.zip")
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(tmp_path / "rebuilt.zip") as b:
        files = [n for n in a.namelist() if not n.endswith("/")]
        assert sorted(files) == sorted(b.namelist())
        assert all(a.read(name) == b.read(name) for name in files)
    ship_archive.decode(tmp_path / "rebuilt.zip", tmp_path / "raw.npz")
    with np.load(tmp_path / "raw.npz") as shipped:
        direct = cifake.decode_entries(cifake.read_zip(original), workers=1)
        for name, values in direct.arrays().items():
            np.testing.assert_array_equal(shipped[name], values)


def test_unpack_refuses_a_member_whose_bytes_differ_from_the_original(tmp_path):
    with lzma.open(tmp_path / "packed.xz", "wb") as out:
        out.write(json.dumps([["train/REAL/0 (1).jpg", 3, 12345]]).encode() + b"\n" + b"abc")
    with pytest.raises(SystemExit, match=r"train/REAL/0 \(1\).jpg is damaged"):
        ship_archive.unpack(tmp_path / "packed.xz", tmp_path / "rebuilt.zip")
    assert not (tmp_path / "rebuilt.zip").exists()  # nothing half-written is left behind
