"""Where CIFAKE comes from: Kaggle (through kagglehub) or a Kaggle-layout zip given by path or URL."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from realfake.errors import DataError, SourceUnavailableError
from realfake.fileio import atomic_path

log = logging.getLogger(__name__)

LOCAL_ARCHIVE_HINT = "dvc exp run -S data.source=archive -S data.archive=PATH"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise when it differs from `expected` (None = nothing to compare)."""
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        raise DataError(
            f"{path}: sha256 is {actual}, but data.archive_sha256 expects {expected}. The file is damaged or a "
            f"different version: download it again, or set data.archive_sha256 to null to accept it."
        )
    return actual


def fetch_kaggle(dataset: str) -> Path:
    """Download (or reuse kagglehub's cache of) a Kaggle dataset; return its local folder."""
    try:
        import kagglehub

        return Path(kagglehub.dataset_download(dataset))
    except Exception as exc:  # kagglehub raises requests, HTTP and its own errors alike
        raise SourceUnavailableError(
            f"data.source=kaggle: could not download Kaggle dataset {dataset!r} ({type(exc).__name__}: {exc}). "
            f"Offline or without Kaggle access? Use a local copy of the archive instead: {LOCAL_ARCHIVE_HINT}"
        ) from exc


def _download(url: str, dest: Path) -> None:
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))


def fetch_archive(location: str, *, cache_dir: Path, sha256: str | None) -> Path:
    """Resolve `location` (a path, file:// or http(s):// URL) to a verified local zip file."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("http", "https"):
        name = Path(parsed.path).name or "archive.zip"
        key = hashlib.sha256(location.encode()).hexdigest()[:12]
        path = Path(cache_dir) / f"{key}-{name}"
        if path.exists() and sha256 and sha256_of(path) == sha256.lower():
            log.info("using cached download %s", path)
            return path
        try:
            _download(location, path)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise SourceUnavailableError(
                f"data.archive={location}: could not download ({exc}). Check the URL and your network, or "
                f"download the zip yourself and point to the file: {LOCAL_ARCHIVE_HINT}"
            ) from exc
    elif parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme in ("", "c", "d") or len(parsed.scheme) == 1:  # plain paths (and Windows drives)
        path = Path(location).expanduser()
    else:
        raise DataError(
            f"data.archive={location}: unsupported URL scheme {parsed.scheme!r}; use a path, file://, "
            f"http:// or https://"
        )
    if not path.is_file():
        raise DataError(f"data.archive={location}: file {path} not found. Give the path of a Kaggle-layout zip.")
    verify_sha256(path, sha256)
    return path


def copy_file(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
