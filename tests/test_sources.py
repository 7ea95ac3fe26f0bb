"""Fetching CIFAKE: local paths, file:// and http(s):// URLs (served on loopback), Kaggle, and offline errors."""

import functools
import http.server
import socket
import threading

import pytest

from realfake import sources
from realfake.errors import DataError, SourceUnavailableError


@pytest.fixture
def http_server(cifake_zip):
    """Serve the fixture's folder on a free loopback port, as a real download would."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cifake_zip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_local_path_and_file_url(cifake_zip, tmp_path):
    assert sources.fetch_archive(str(cifake_zip), cache_dir=tmp_path, sha256=None) == cifake_zip
    assert sources.fetch_archive(cifake_zip.as_uri(), cache_dir=tmp_path, sha256=None) == cifake_zip


def test_http_download_is_verified_and_cached(cifake_zip, http_server, tmp_path):
    sha = sources.sha256_of(cifake_zip)
    cache = tmp_path / "cache"
    path = sources.fetch_archive(f"{http_server}/{cifake_zip.name}", cache_dir=cache, sha256=sha)
    assert path.read_bytes() == cifake_zip.read_bytes()
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary leftovers
    mtime = path.stat().st_mtime_ns
    assert sources.fetch_archive(f"{http_server}/{cifake_zip.name}", cache_dir=cache, sha256=sha) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not downloaded again


def test_sha256_mismatch_names_param(cifake_zip, tmp_path):
    with pytest.raises(DataError, match="data.archive_sha256"):
        sources.fetch_archive(str(cifake_zip), cache_dir=tmp_path, sha256="0" * 64)


def test_http_404_leaves_nothing_behind(http_server, tmp_path):
    with pytest.raises(SourceUnavailableError, match="could not download"):
        sources.fetch_archive(f"{http_server}/missing.zip", cache_dir=tmp_path / "cache", sha256=None)
    assert not any((tmp_path / "cache").iterdir())


def test_unreachable_url_says_how_to_use_a_local_archive(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as when offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnavailableError) as info:
        sources.fetch_archive(f"http://127.0.0.1:{port}/cifake.zip", cache_dir=tmp_path, sha256=None)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "dvc exp run -S data.source=archive -S data.archive=PATH" in str(info.value)


def test_missing_local_archive(tmp_path):
    with pytest.raises(DataError, match="not found"):
        sources.fetch_archive(str(tmp_path / "nope.zip"), cache_dir=tmp_path, sha256=None)


def test_kaggle_offline_error(monkeypatch):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(SourceUnavailableError) as info:
        sources.fetch_kaggle("birdy654/cifake-real-and-ai-generated-synthetic-images")
    message = str(info.value)
    assert "birdy654/cifake-real-and-ai-generated-synthetic-images" in message
    assert "dvc exp run -S data.source=archive -S data.archive=PATH" in message


def test_kaggle_returns_its_folder(monkeypatch, tmp_path):
    import kagglehub

    calls = []
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: calls.append(handle) or str(tmp_path))
    assert sources.fetch_kaggle("owner/name") == tmp_path and calls == ["owner/name"]
