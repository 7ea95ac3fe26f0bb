"""`realfake serve`: the JSON API on real-looking JPEGs and PNGs (the shipped detector, as predict runs it), its
limits and errors with nothing half-done, the page and the model card, and 8 concurrent clients."""

import http.client
import io
import json
import struct
import threading
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from realfake.serving import models, server
from realfake.serving.classify import score_pixels
from realfake.serving.images import MAX_PIXELS, decode_bytes

FIELDS = {"path", "p_fake", "label", "model", "resampled", "ood", "ood_score"}  # predict --format json's


def jpeg(pixels: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth scene with some texture, like a downscaled photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(3 * (x + y))], axis=-1) * 80 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def huge_header_png(width: int, height: int) -> bytes:
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def detector():
    return models.shipped_model()


@pytest.fixture(scope="module")
def url(detector):
    with server.BackgroundServer(server.create_app(detector)) as address:
        yield address


@pytest.fixture(scope="module")
def small_limits_url(detector):
    limits = server.Limits(max_request_bytes=300_000, max_files=3, max_pixels=1_000_000)
    with server.BackgroundServer(server.create_app(detector, limits=limits)) as address:
        yield address


def request(url: str, method: str, path: str, body=None, headers=None, chunked=False) -> tuple[int, dict | str, dict]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        raw = response.read()
        kind = response.getheader("content-type", "")
        payload = json.loads(raw) if kind.startswith("application/json") else raw.decode()
        return response.status, payload, dict(response.getheaders())
    finally:
        connection.close()


def post(url: str, files: list[tuple[str, bytes]], query: str = "") -> tuple[int, dict]:
    body, kind = server.multipart_body(files)
    status, payload, _ = request(url, "POST", "/v1/predict" + query, body, {"Content-Type": kind})
    return status, payload


def expected(detector, files: list[tuple[str, bytes]], threshold: float) -> list[dict]:
    decoded = [decode_bytes(data, size=detector.engine.size, max_pixels=MAX_PIXELS) for _, data in files]
    rows = score_pixels(detector, [n for n, _ in files], [d[0] for d in decoded], [d[1] for d in decoded],
                        threshold=threshold)  # fmt: skip
    return [row.__dict__ for row in rows]


GOOD = [("cifake.jpg", jpeg(photo(32, 32, 1))), ("holiday.jpg", jpeg(photo(640, 480, 2), quality=88)),
        ("screenshot.png", png(photo(300, 200, 3))), ("tiny.png", png(photo(32, 32, 4)))]  # fmt: skip


def test_predict_answers_per_image_what_predict_does(url, detector):
    status, answer = post(url, GOOD)
    assert status == 200, answer
    assert (answer["model"], answer["operating_point"], answer["threshold"]) == (detector.name, None, 0.5)
    assert [r["path"] for r in answer["results"]] == [name for name, _ in GOOD]
    for got, want in zip(answer["results"], expected(detector, GOOD, 0.5), strict=True):
        assert set(got) == FIELDS
        assert got["p_fake"] == pytest.approx(want["p_fake"], abs=1e-6)
        assert (got["label"], got["resampled"], got["ood"]) == (want["label"], want["resampled"], want["ood"])
    assert [r["resampled"] for r in answer["results"]] == [False, True, True, False]


def test_an_operating_point_by_name_and_an_unknown_one(url, detector):
    point = detector.info.operating_points["fpr_0.01"]
    status, answer = post(url, GOOD[:2], "?operating_point=fpr_0.01")
    assert status == 200 and answer["operating_point"] == "fpr_0.01" and answer["threshold"] == point["threshold"]
    assert [r["label"] for r in answer["results"]] == [r["label"] for r in expected(detector, GOOD[:2],
                                                                                     point["threshold"])]  # fmt: skip
    status, answer = post(url, GOOD[:1], "?operating_point=fpr_0.5")
    assert status == 422 and "unknown operating point 'fpr_0.5'" in answer["error"]
    assert answer["known"] == ["fpr_0.01", "fpr_0.05"]


@pytest.mark.parametrize(
    ("bad", "status", "words"),
    [(("notes.jpg", b"just some text, named like a photo\n"), 415, "not an image format"),
     (("cut.jpg", GOOD[1][1][:600]), 422, "damaged"),
     (("empty.png", b""), 415, "empty file")],
)  # fmt: skip
def test_a_bad_file_fails_the_whole_request_naming_it(url, bad, status, words):
    got, answer = post(url, [GOOD[0], bad, GOOD[2]])
    assert got == status and answer["file"] == bad[0]
    assert answer["error"].startswith(f"{bad[0]}: ") and words in answer["error"]
    assert "results" not in answer  # nothing half-done


def test_limits_answer_413_with_a_clear_error(small_limits_url):
    status, answer = post(small_limits_url, [GOOD[0]] * 4)
    assert status == 413 and "4 files is over the limit of 3" in answer["error"]
    status, answer = post(small_limits_url, [GOOD[0], ("bomb.png", huge_header_png(5000, 5000))])
    assert status == 413 and answer["file"] == "bomb.png" and "over the limit of 1,000,000" in answer["error"]
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    status, answer = post(small_limits_url, [("noise.png", png(noise))])  # ~480 kB: over 300,000 bytes
    assert status == 413 and "over the limit of 300,000 bytes" in answer["error"]
    body, kind = server.multipart_body([("noise.png", png(noise))])
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: counted as it comes
    status, answer, _ = request(small_limits_url, "POST", "/v1/predict", chunks,
                                {"Content-Type": kind, "Transfer-Encoding": "chunked"}, chunked=True)  # fmt: skip
    assert status == 413 and "over the limit of 300,000 bytes" in answer["error"]
    status, answer = post(small_limits_url, GOOD[:3])  # within every limit
    assert status == 200 and len(answer["results"]) == 3


def test_no_file_or_no_multipart_body_is_a_422(url):
    status, answer, _ = request(url, "POST", "/v1/predict", b"{}", {"Content-Type": "application/json"})
    assert status == 422 and "field 'file'" in answer["error"]


def test_healthz_page_and_model_card(url, detector):
    status, health, _ = request(url, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["model"] == detector.name
    assert health["test_accuracy"] == detector.card["test"]["accuracy"] and health["engine"] == "onnx"
    assert health["version"] and set(health["operating_points"]) == {"fpr_0.01", "fpr_0.05"}
    status, page, headers = request(url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/v1/predict" in page and 'href="/model-card"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: no external assets
    status, card, headers = request(url, "GET", "/model-card")
    assert status == 200 and headers["content-type"].startswith("text/markdown") and "## Limits" in card


def test_eight_concurrent_clients_lose_nothing(url, detector, capsys):
    rng = np.random.default_rng(5)
    pool = [(f"img{i}.jpg", jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))) for i in range(16)]
    want = {row["path"]: row for row in expected(detector, pool, 0.5)}
    latencies, failures, lock = [], [], threading.Lock()

    def client(seed: int) -> None:
        local = np.random.default_rng(seed)
        for _ in range(50):
            name, data = pool[int(local.integers(len(pool)))]
            started = time.perf_counter()
            try:
                status, answer = post(url, [(name, data)])
                ok = status == 200 and answer["results"][0]["path"] == name and abs(
                    answer["results"][0]["p_fake"] - want[name]["p_fake"]) <= 1e-6  # fmt: skip
            except Exception as exc:  # noqa: BLE001  a lost request is a failure to report, not to crash on
                ok, answer = False, repr(exc)
            with lock:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    failures.append(answer)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(latencies) == 400, failures[:3]
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    with capsys.disabled():
        print(f"\nserve: 8 clients x 50 requests of one 32x32 JPEG: p50 {p50:.1f} ms, p95 {p95:.1f} ms")


def test_the_serve_command_listens_on_127_0_0_1_without_tensorflow(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    probe = (
        "import json, sys, uvicorn\n"
        "uvicorn.run = lambda app, **kw: print(json.dumps({'host': kw['host'], 'port': kw['port'], 'heavy': sorted("
        "{m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'mlflow'})}))\n"
        "from realfake.serving.cli import main\nsys.exit(main(['serve']))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"host": "127.0.0.1", "port": 8000, "heavy": []}

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "realfake.serving.cli", "serve", "--port", str(port)],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health, _ = request(f"http://127.0.0.1:{port}", "GET", "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.2)
        assert status == 200 and health["model"] == models.shipped_model().name
        status, answer = post(f"http://127.0.0.1:{port}", GOOD[:1])
        assert status == 200 and answer["results"][0]["path"] == "cifake.jpg"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and f"serving {models.shipped_model().name} on http://127.0.0.1:{port}/" in err
