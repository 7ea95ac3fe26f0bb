"""`realfake serve`: the detector `realfake predict` uses, over HTTP (FastAPI on uvicorn, 127.0.0.1 by default).

- `POST /v1/predict`: one or more images as the multipart field `file`; `?operating_point=fpr_0.01` picks a stored
  operating point (an unknown one is a 422). Answers {model, operating_point, threshold, results: [one object per
  image with the fields of `predict --format json`, `path` being the uploaded file name]}.
- `GET /healthz`: the model, its card's test accuracy, realfake's version, the operating points.
- `GET /`: an upload page (no external assets); `GET /model-card`: a shipped detector's MODEL_CARD.md.

Limits, each a JSON error with nothing half-done (one bad file fails the whole request, naming it): the request's
size, the files per request and the pixels per image (413); a file that is not an image (415) or is damaged (422).
"""

from __future__ import annotations

import dataclasses
import io
import sys
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from realfake.serving.classify import score_pixels
from realfake.serving.images import MAX_PIXELS, UnreadableImageError, decode_bytes
from realfake.serving.models import LoadedModel


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 32 * 1024 * 1024  # the whole multipart body
    max_files: int = 64  # images per request
    max_pixels: int = MAX_PIXELS  # per image, read from its header before it is decoded


class RequestTooLarge(Exception):
    pass


# A body over the limit but under this many times it is read to its end (and dropped) before the 413 is sent, so
# that a client still sending sees the answer instead of a reset connection; a larger one is cut off at once.
DRAIN_FACTOR = 8


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _json_error(status: int, message: str, **extra):
    return JSONResponse({"error": message, **extra}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request whose declared or actual body exceeds `max_bytes` is refused with 413 before it
    is parsed (a declared length) or as soon as it passes the limit (a chunked upload)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = _json_error(413, f"request of {int(declared):,} bytes is over the limit of "
                                        f"{self.max_bytes:,} bytes", limit=self.max_bytes)  # fmt: skip
            if int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await _drain(receive)  # read (and drop) the rest, so that the client is there to read the answer
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    while message.get("more_body", False) and received <= DRAIN_FACTOR * self.max_bytes:
                        message = await receive()  # read (and drop) the rest, as for a declared length
                        received += len(message.get("body", b""))
                    raise RequestTooLarge()
            return message

        return await self.app(scope, limited, send)


def _version() -> str:
    try:
        return version("realfake")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _test_accuracy(loaded: LoadedModel) -> float | None:
    return (loaded.card or {}).get("test", {}).get("accuracy")


def _status_of(exc: UnreadableImageError) -> int:
    return {"size": 413, "format": 415}.get(exc.kind, 422)


def create_app(loaded: LoadedModel, *, limits: Limits = Limits()):
    """The FastAPI application serving `loaded`."""
    from realfake.serving.page import PAGE

    app = FastAPI(title="realfake", version=_version(), docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    points = dict(loaded.info.operating_points) if loaded.info else {}

    @app.exception_handler(RequestTooLarge)
    async def too_large(request, exc):
        return _json_error(413, f"request over the limit of {limits.max_request_bytes:,} bytes",
                           limit=limits.max_request_bytes)  # fmt: skip

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok", "model": loaded.name, "engine": loaded.engine.kind, "test_accuracy": _test_accuracy(loaded),
            "version": _version(), "threshold": loaded.threshold, "operating_points": points,
            "resized_accuracy": loaded.resized_accuracy, "model_card": "/model-card" if _card_text() else None,
            "limits": dataclasses.asdict(limits),
        }  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE)

    @app.get("/model-card")
    async def model_card():
        text = _card_text()
        if text is None:
            return _json_error(404, f"model {loaded.name} has no model card")
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")

    @app.post("/v1/predict")
    async def predict(request: Request, operating_point: str | None = None):
        if operating_point in (None, "", "default"):
            threshold, chosen = loaded.threshold, None
        elif operating_point in points:
            threshold, chosen = float(points[operating_point]["threshold"]), operating_point
        else:
            return _json_error(422, f"unknown operating point {operating_point!r}", known=sorted(points))
        try:
            form = await request.form(max_files=10 * limits.max_files, max_fields=10 * limits.max_files)
        except RequestTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001  starlette answers a malformed body with several types
            return _json_error(422, f"not a multipart/form-data body with files in the field 'file' ({exc})")
        uploads = [item for item in form.getlist("file") if hasattr(item, "read")]
        if not uploads:
            return _json_error(422, "no file: send one or more images in the multipart field 'file'")
        if len(uploads) > limits.max_files:
            return _json_error(413, f"{len(uploads)} files is over the limit of {limits.max_files} per request",
                               limit=limits.max_files)  # fmt: skip
        names, pixels, resampled = [], [], []
        for upload in uploads:
            name = upload.filename or "upload"
            data = await upload.read()
            try:
                image, changed = await run_in_threadpool(
                    decode_bytes, data, size=loaded.engine.size, max_pixels=limits.max_pixels
                )
            except UnreadableImageError as exc:
                return _json_error(_status_of(exc), f"{name}: {exc}", file=name)
            names.append(name)
            pixels.append(image)
            resampled.append(changed)
        predictions = await run_in_threadpool(score_pixels, loaded, names, pixels, resampled, threshold=threshold)
        return {
            "model": loaded.name, "operating_point": chosen, "threshold": threshold,
            "results": [dataclasses.asdict(p) for p in predictions],
        }  # fmt: skip

    def _card_text() -> str | None:
        if loaded.model_card is not None and loaded.model_card.is_file():
            return loaded.model_card.read_text()
        return None

    return app


def serve(loaded: LoadedModel, *, host: str, port: int, limits: Limits = Limits()) -> int:
    """Run the server until Ctrl-C; returns the exit status."""
    import uvicorn

    app = create_app(loaded, limits=limits)
    print(f"realfake: serving {loaded.name} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


def multipart_body(files: list[tuple[str, bytes]], boundary: str = "realfake-boundary") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request with `files` in the field `file` (for clients and
    tests that have no HTTP library of their own)."""
    out = io.BytesIO()
    for name, data in files:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n".encode())  # fmt: skip
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class BackgroundServer:
    """`app` served by uvicorn in a thread of this process on 127.0.0.1 (tests, benchmarks): `with
    BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import socket

        import uvicorn

        with socket.socket() as probe:  # a free port
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = None

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
