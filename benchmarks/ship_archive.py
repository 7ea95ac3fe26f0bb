"""Carry a CIFAKE zip to a host that takes only small transfers (a GPU host without network) and decode it there.

    python3 benchmarks/ship_archive.py pack data/cifake.zip .gpu/cifake-large.jpgs.xz
    python3 benchmarks/ship_archive.py unpack .gpu/cifake-large.jpgs.xz /tmp/cifake-large.zip
    python3 benchmarks/ship_archive.py decode /tmp/cifake-large.zip /tmp/cifake-large.npz

`pack` writes the archive's image files, bytes unchanged, as one xz stream: each 32x32 JPEG repeats ~600 bytes of
identical headers and tables, which xz stores once (cifake-large.zip: 94 MB -> about 27 MB). `unpack` rebuilds a
zip of the same member names and bytes, checking each member against the CRC-32 the original zip recorded.
`decode` is the download stage's decoding (`cifake.decode_entries`, every core), saved as the .npz it writes.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from realfake.data import cifake  # noqa: E402
from realfake.fileio import atomic_path, save_arrays  # noqa: E402


def pack(archive: Path, packed: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        header = [[info.filename, info.file_size, info.CRC] for info in members]
        with atomic_path(packed) as tmp, lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
            out.write(json.dumps(header).encode() + b"\n")
            for info in members:
                out.write(zf.read(info))
    print(f"{archive}: {len(members)} files -> {packed} ({packed.stat().st_size:,} bytes)")


def unpack(packed: Path, archive: Path) -> None:
    with lzma.open(packed, "rb") as src, atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        header = json.loads(src.readline())
        for name, size, crc in header:
            data = src.read(size)
            if len(data) != size or zlib.crc32(data) != crc:
                raise SystemExit(f"{packed}: {name} is damaged (size or CRC-32 differs from the original zip)")
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    print(f"{packed}: {len(header)} files -> {archive}, every CRC-32 as in the original")


def decode(archive: Path, raw_npz: Path) -> None:
    raw = cifake.decode_entries(cifake.read_zip(archive))
    save_arrays(raw_npz, **raw.arrays())
    print(f"{archive}: {len(raw.images)} images decoded -> {raw_npz}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack", "decode"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    {"pack": pack, "unpack": unpack, "decode": decode}[args.action](args.source, args.target)


if __name__ == "__main__":
    main()
