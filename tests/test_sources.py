"""Fetching CIFAKE: local paths, file:// and http(s):// URLs (served on loopback), Kaggle, and offline errors."""

import contextlib
import functools
import http.server
import socket
import threading

import pytest

from realfake.data import sources
from realfake.errors import DataError, SourceUnavailableError

OFFLINE_ADVICE = "put the zip at data/cifake.zip (the default data.archive) and run `make repro`"


@contextlib.contextmanager
def serving(handler):
    """Run an HTTP server with `handler` on a free loopback port; yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server(cifake_zip):
    """Serve the fixture's folder on a free loopback port, as a real download would."""
    with serving(functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cifake_zip.parent))) as url:
        yield url


class CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Promise 1000 bytes, send 10, close: what a dropped connection looks like to the client."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04" + bytes(6))
        self.close_connection = True

    def log_message(self, *args):
        pass


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
    assert OFFLINE_ADVICE in str(info.value) and "dvc exp run -S data.archive=PATH" in str(info.value)


def test_missing_local_archive(tmp_path):
    with pytest.raises(DataError, match="not found"):
        sources.fetch_archive(str(tmp_path / "nope.zip"), cache_dir=tmp_path, sha256=None)


def test_kaggle_offline_error(monkeypatch):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(SourceUnavailableError) as info:
        sources.fetch_kaggle("birdy654/cifake-real-and-ai-generated-synthetic-images", hint="Do this instead.")
    message = str(info.value)
    assert "birdy654/cifake-real-and-ai-generated-synthetic-images" in message
    assert message.endswith("Offline or without Kaggle access? Do this instead.")


def test_kaggle_returns_its_folder(monkeypatch, tmp_path):
    import kagglehub

    calls = []
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: calls.append(handle) or str(tmp_path))
    assert sources.fetch_kaggle("owner/name", hint="unused") == tmp_path and calls == ["owner/name"]


def test_folder_given_as_archive(tmp_path):
    (tmp_path / "cifake").mkdir()
    with pytest.raises(DataError, match=r"data\.archive=.*cifake: .*cifake is a folder, not a zip file"):
        sources.fetch_archive(str(tmp_path / "cifake"), cache_dir=tmp_path / "cache", sha256=None)


def test_download_cut_short_is_refused(tmp_path):
    cache = tmp_path / "cache"
    with serving(CutShortHandler) as url, pytest.raises(SourceUnavailableError) as info:
        sources.fetch_archive(f"{url}/cifake.zip", cache_dir=cache, sha256=None)
    assert "the download was cut short: got 10 of 1000 bytes" in str(info.value)
    assert not any(cache.iterdir())  # no partial file for a later run to pick up


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (
            "https://user:pa55@example.com/d/cifake.zip?X-Amz-Signature=abc&X-Amz-Credential=k#part",
            "https://example.com/d/cifake.zip",
        ),
        ("http://Example.com:8080/cifake.zip", "http://Example.com:8080/cifake.zip"),
        ("file:///data/cifake.zip", "file:///data/cifake.zip"),
        ("data/cifake.zip", "data/cifake.zip"),
        ("/data/a?b#c.zip", "/data/a?b#c.zip"),  # a local file name may hold ? and #
    ],
)
def test_redact(location, shown):
    assert sources.redact(location) == shown


def test_messages_do_not_show_url_secrets(cifake_zip, http_server, tmp_path):
    signed = f"{http_server}/{cifake_zip.name}?X-Amz-Signature=s3cr3t#frag"
    with pytest.raises(DataError, match="data.archive_sha256") as info:  # the server ignores the query
        sources.fetch_archive(signed, cache_dir=tmp_path / "cache", sha256="0" * 64)
    assert f"{http_server}/{cifake_zip.name}" in str(info.value) and "s3cr3t" not in str(info.value)

    with pytest.raises(DataError, match="user name or password in the URL is not supported") as info:
        sources.fetch_archive("http://me:s3cr3t@127.0.0.1/c.zip", cache_dir=tmp_path, sha256=None)
    assert "http://127.0.0.1/c.zip" in str(info.value) and "s3cr3t" not in str(info.value)

    with pytest.raises(SourceUnavailableError) as info:  # urllib's error quotes the path and query
        sources.fetch_archive("http://127.0.0.1:1/c.zip?sig=s3cr3t x", cache_dir=tmp_path, sha256=None)
    assert "could not download" in str(info.value) and "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None  # a chained exception would print the secret in a traceback


def test_resolve_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "repo"
    assert sources.resolve_location("data/cifake.zip", root) == str(root / "data/cifake.zip")
    assert sources.resolve_location("~/cifake.zip", root) == str(tmp_path / "home/cifake.zip")
    for unchanged in ("/srv/cifake.zip", "file:///srv/cifake.zip", "https://example.com/cifake.zip?a=1"):
        assert sources.resolve_location(unchanged, root) == unchanged


def test_local_archive(cifake_zip, tmp_path):
    assert sources.local_archive(str(cifake_zip)) == cifake_zip
    assert sources.local_archive(cifake_zip.as_uri()) == cifake_zip
    assert sources.local_archive(str(tmp_path / "missing.zip")) is None
    assert sources.local_archive(str(tmp_path)) is None  # a folder is no archive
    assert sources.local_archive("https://example.com/cifake.zip") is None
