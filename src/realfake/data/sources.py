"""Where CIFAKE comes from: Kaggle (through kagglehub) or a Kaggle-layout zip given by path or URL."""

from __future__ import annotations

import hashlib
import http.client
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

# Advice for when a download fails: both commands work offline once the zip is on disk.
LOCAL_ARCHIVE_HINT = (
    "put the zip at data/cifake.zip (the default data.archive) and run `make repro`, "
    "or `dvc exp run -S data.archive=PATH`"
)


def _is_url(parsed: urllib.parse.SplitResult) -> bool:
    """A scheme of one letter is a Windows drive (C:\\data\\cifake.zip), not a URL."""
    return len(parsed.scheme) > 1


def redact(location: str) -> str:
    """`location` fit for messages and logs: a URL loses its user:password@, query and fragment (signed URLs carry
    their signature in the query, ?X-Amz-Signature=...); a local path is returned unchanged."""
    parsed = urllib.parse.urlsplit(location)
    if not _is_url(parsed):
        return location
    host = parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


def _scrub(text: str, location: str) -> str:
    """`text` (an exception's message, say) without the parts of `location` that redact() drops.

    Each part is removed with its delimiter, so a short password or query cannot blank out unrelated text."""
    parsed = urllib.parse.urlsplit(location)
    if not _is_url(parsed):
        return text
    parts = [(parsed.netloc.rpartition("@")[0], "@"), ("?", parsed.query), ("#", parsed.fragment)]
    secrets = ["".join(pair) for pair in parts if all(pair)]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "")
    return text


def resolve_location(location: str, root: Path) -> str:
    """A relative local path resolved against `root` (the main repository, so that a DVC experiment queued in a
    temporary copy finds the main repository's data/cifake.zip); `~` is expanded; absolute paths and URLs are
    returned unchanged."""
    if _is_url(urllib.parse.urlsplit(location)):
        return location
    if Path(location).is_absolute():
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else Path(root) / path)


def _local_path(location: str) -> Path | None:
    """The file a path or file:// URL names; None for other URLs."""
    parsed = urllib.parse.urlsplit(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not _is_url(parsed):
        return Path(location).expanduser()
    return None


def local_archive(location: str) -> Path | None:
    """The local file `location` (a path or file:// URL) names when it exists as a regular file, else None (for a
    missing file, a folder and any http(s) URL alike). Relative paths are taken from the working directory: pass
    them through resolve_location first."""
    path = _local_path(location)
    return path if path is not None and path.is_file() else None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, *, location: str | None = None) -> str:
    """Return the file's sha256; raise when it differs from `expected` (None = nothing to compare).

    `location`: where the file came from (a URL, say), named in the message beside the local path."""
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        origin = f"{path} (downloaded from {redact(location)})" if location else str(path)
        raise DataError(
            f"{origin}: sha256 is {actual}, but data.archive_sha256 expects {expected}. The file is damaged or a "
            f"different version: download it again, or set data.archive_sha256 to null to accept it."
        )
    return actual


def fetch_kaggle(dataset: str, *, hint: str) -> Path:
    """Download (or reuse kagglehub's cache of) a Kaggle dataset; return its local folder.

    `hint`: what the user can do instead when Kaggle cannot be reached, appended to the error."""
    try:
        import kagglehub

        return Path(kagglehub.dataset_download(dataset))
    except Exception as exc:  # kagglehub raises requests, HTTP and its own errors alike
        raise SourceUnavailableError(
            f"data.source=kaggle: could not download Kaggle dataset {dataset!r} ({type(exc).__name__}: {exc}). "
            f"Offline or without Kaggle access? {hint}"
        ) from exc


def _download(url: str, dest: Path) -> None:
    """Stream `url` into `dest`; nothing is left at `dest` when the transfer fails or is cut short."""
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=None) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                got += len(block)
                bar.update(len(block))
        # http.client ends a body that stops early like a complete one, so the length is checked here.
        if total is not None and got < total:
            raise SourceUnavailableError(
                f"data.archive={redact(url)}: the download was cut short: got {got} of {total} bytes. Try again; "
                f"if it keeps failing, download the zip yourself: {LOCAL_ARCHIVE_HINT}."
            )


def _fetch_url(location: str, cache_dir: Path, sha256: str | None) -> Path:
    """Download an http(s) URL into `cache_dir`, reusing an earlier download whose sha256 is the expected one."""
    name = Path(urllib.parse.urlsplit(location).path).name or "archive.zip"
    # Keyed without credentials and query: a signed URL changes its signature on each request, not its file.
    key = hashlib.sha256(redact(location).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{key}-{name}"
    if path.exists() and sha256 and sha256_of(path) == sha256.lower():
        log.info("using cached download %s", path)
        return path
    try:
        _download(location, path)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
        raise SourceUnavailableError(
            f"data.archive={redact(location)}: could not download ({_scrub(str(exc), location)}). Check the URL and "
            f"your network, or download the zip yourself: {LOCAL_ARCHIVE_HINT}."
        ) from None  # the chained exception could repeat the URL's secrets in a traceback
    verify_sha256(path, sha256, location=location)
    return path


def fetch_archive(location: str, *, cache_dir: Path, sha256: str | None) -> Path:
    """Resolve `location` (a path, file:// or http(s):// URL) to a verified local zip file."""
    parsed = urllib.parse.urlsplit(location)
    scheme = parsed.scheme
    if scheme in ("http", "https") and "@" in parsed.netloc:
        # urllib would take "user:pass@host" for a host name and fail with a misleading error.
        raise DataError(
            f"data.archive={redact(location)}: a user name or password in the URL is not supported; use a signed "
            f"URL, or download the zip yourself: {LOCAL_ARCHIVE_HINT}."
        )
    if scheme in ("http", "https"):
        return _fetch_url(location, cache_dir, sha256)
    path = _local_path(location)
    if path is None:
        raise DataError(
            f"data.archive={redact(location)}: unsupported URL scheme {scheme!r}; use a path, file://, "
            f"http:// or https://"
        )
    if path.is_dir():
        raise DataError(
            f"data.archive={redact(location)}: {path} is a folder, not a zip file. Give the path of the "
            f"Kaggle-layout zip (or zip the folder that holds train/ and test/)."
        )
    if not path.is_file():
        raise DataError(
            f"data.archive={redact(location)}: file {path} not found. Give the path of a Kaggle-layout zip."
        )
    verify_sha256(path, sha256)
    return path


def copy_file(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
