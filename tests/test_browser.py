"""The upload page in a real browser: headless Chromium (Debian's, `scripts/install_chromium.sh`) driven over the
DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL on file descriptors 3 and 4, no
websocket or driver needed) uploads images to `realfake serve` and reads each verdict from the page. Run with
`pytest -m browser`."""

import base64
import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realfake.serving import models, server

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


class DevTools:
    """Chromium with its DevTools protocol on a pipe: `call(method, **params)` waits for the answer."""

    def __init__(self, profile: Path):
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Above 9, so that placing them on 3 and 4 in the child cannot overwrite one with the other.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))

        def on_3_and_4():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=on_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for fd in (to_browser_r, from_browser_w, child_in, child_out):
            os.close(fd)
        self.write, self.read = to_browser_w, from_browser_r
        self.buffer, self.next_id, self.session = b"", 0, None

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.read, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit status {self.process.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"the page never satisfied {expression}")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.write)
        os.close(self.read)


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(3 * (x + y))], axis=-1) * 80 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def served():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing: run scripts/install_chromium.sh")
    detector = models.shipped_model()
    with server.BackgroundServer(server.create_app(detector)) as url:
        yield url, detector


def expected_rows(url: str, files: list[Path]) -> list[dict]:
    import http.client
    from urllib.parse import urlsplit

    body, kind = server.multipart_body([(f.name, f.read_bytes()) for f in files])
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": kind})
    rows = json.loads(connection.getresponse().read())["results"]
    connection.close()
    return rows


def test_upload_an_image_and_read_the_verdict_from_the_page(served, tmp_path):
    url, detector = served
    cifake, holiday = tmp_path / "cifake.jpg", tmp_path / "holiday.jpg"
    buffer = io.BytesIO()
    photo(32, 32, 1).save(buffer, format="JPEG", quality=75)
    cifake.write_bytes(buffer.getvalue())
    photo(640, 480, 2).save(holiday, quality=88)
    want = {row["path"]: row for row in expected_rows(url, [cifake, holiday])}

    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url=f"{url}/")["targetId"]
        browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Runtime.enable")
        browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent")
        assert detector.name in browser.evaluate("document.getElementById('model').textContent")
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        for image in (cifake, holiday):
            node = browser.call("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(image)])
            browser.wait_for(f"[...document.querySelectorAll('tr.result td:first-child')]"
                             f".some(td => td.textContent === {json.dumps(image.name)})")  # fmt: skip
        rows = browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('tr.result')].map(r => ({name: r.cells[0].textContent, "
            "verdict: r.cells[1].textContent, p: r.cells[2].textContent, point: r.cells[3].textContent, "
            "warnings: r.cells[4].textContent})))"
        )
        link = browser.evaluate("document.getElementById('card-link').getAttribute('href')")
        if os.environ.get("REALFAKE_SCREENSHOT"):  # the README's picture of the page: the same page, these two images
            browser.call(
                "Emulation.setDeviceMetricsOverride", width=1000, height=640, deviceScaleFactor=1, mobile=False
            )
            shot = browser.call("Page.captureScreenshot", format="png")["data"]
            Path(os.environ["REALFAKE_SCREENSHOT"]).write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
    shown = {row["name"]: row for row in json.loads(rows)}
    assert set(shown) == {"cifake.jpg", "holiday.jpg"}
    for name, row in shown.items():
        assert row["verdict"] == {"fake": "AI-generated", "real": "Real photo"}[want[name]["label"]]
        assert row["p"] == f"{100 * want[name]['p_fake']:.1f}%"
        assert row["point"].startswith("default (threshold 0.500)")
    assert "resized" in shown["holiday.jpg"]["warnings"] and "resized" not in shown["cifake.jpg"]["warnings"]
    assert ("unreliable" in shown["holiday.jpg"]["warnings"]) == bool(want["holiday.jpg"]["ood"])
    assert link == "/model-card"
