"""`pawnet serve`: a REST service and a web page for one model, with dynamic batching.

```
GET  /            the web page: pick or drop photos, see each label and a bar per class
POST /v1/predict  multipart fields named `file` (repeatable), or one raw image as the body
GET  /v1/model    class names, image size, model name, provenance summary
GET  /healthz     200 once the model is loaded and a warm-up prediction has run
GET  /metrics     Prometheus text: requests, latency, batch sizes, queue depth
GET  /docs        the OpenAPI page
```

Requests decode their photos in a thread pool (with the same `load_pixels` as training and
`pawnet predict`), then hand the pixels to one `Batcher` thread that gathers images from
concurrent requests into one model call: it starts a batch when the oldest waiting image has
waited `max_wait_ms`, or as soon as `max_batch` images are waiting. The queue is bounded, so
a flood gets 503 with Retry-After instead of unbounded memory; every request has a time
limit. Anything a client can send gets a 4xx with a one-line reason, never a 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pawnet.errors import ConfigError, PawnetError
from pawnet.images import MAX_PIXELS, ImageError, load_pixels
from pawnet.predict import Prediction, Predictor, load

STATIC = Path(__file__).parent / "static"
MAX_FILES = 32  # images per request
QUEUE_SIZE = 256  # images waiting for the model, all requests together
TIMEOUT_S = 30.0  # per request: reading the upload, and waiting for the model
RAW_TYPES = ("image/", "application/octet-stream")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class QueueFull(Exception):
    """The batcher has no room for the images of one more request."""


class TooLarge(Exception):
    """The upload passed the size limit while it was being read."""


@dataclass
class _Job:
    pixels: np.ndarray  # (size, size, 3) uint8
    future: Future
    enqueued: float


class Batcher:
    """One thread that runs the model on images gathered from concurrent requests.

    A batch starts when `max_batch` images are waiting, or when the oldest waiting image has
    waited `max_wait_s` (under load the model call itself is the wait, so no time is added).
    Images whose request gave up (timed out, disconnected) are dropped before the model call.

    Args:
        predict_fn: uint8 images `(N, size, size, 3)` -> probabilities `(N, classes)`.
        max_batch: most images per model call.
        max_wait_s: longest an image waits for others to join its batch.
        queue_size: most images waiting; `submit` raises `QueueFull` beyond it.
        on_batch: called with each batch's size, after the model call.
    """

    def __init__(self, predict_fn: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 max_wait_s: float, queue_size: int,
                 on_batch: Callable[[int], None] = lambda n: None):
        self.predict_fn = predict_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pawnet-batcher", daemon=True)

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the images already queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, images: Sequence[np.ndarray]) -> list[Future]:
        """Queue all of a request's images, or none of them.

        Raises:
            QueueFull: there is no room for all of them.
        """
        now = time.monotonic()
        jobs = [_Job(pixels, Future(), now) for pixels in images]
        with self._cond:
            if self._stopping:
                raise QueueFull("the service is shutting down")
            if len(self._jobs) + len(jobs) > self.queue_size:
                raise QueueFull(f"{len(self._jobs)} images already wait for the model "
                                f"(limit {self.queue_size})")
            self._jobs.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while len(self._jobs) < self.max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                probs = self.predict_fn(np.stack([job.pixels for job in batch]))
            except Exception as exc:  # a bug or a broken model: fail these requests, keep going
                for job in batch:
                    job.future.set_exception(exc)
                continue
            for job, row in zip(batch, probs, strict=True):
                job.future.set_result(row)
            self.on_batch(len(batch))


class _Metrics:
    """The Prometheus metrics of one app, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("pawnet_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("pawnet_request_duration_seconds",
                                 "Time from request to response, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("pawnet_batch_size", "Images per model call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("pawnet_images", "Images received, by outcome.", ["outcome"],
                              registry=self.registry)
        depth = Gauge("pawnet_queue_depth", "Images waiting for the model.",
                      registry=self.registry)
        depth.set_function(queue_depth)


class _MetricsMiddleware:
    """Counts every response by endpoint (the route's path, never the raw URL) and status."""

    def __init__(self, app, metrics: Callable[[], _Metrics | None]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            metrics = self.metrics()
            if metrics is not None:
                metrics.requests.labels(endpoint, str(status[0])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _fail(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _upload_name(name: str | None, index: int) -> str:
    """The name to report for an upload: the client's file name, shown back, never opened."""
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return (base or f"file{index + 1}")[:200]


def _provenance_summary(model_ref) -> dict:
    from pawnet.builtin import is_builtin
    from pawnet.bundle import find_bundle

    if isinstance(model_ref, Predictor):
        return {}
    if is_builtin(model_ref):
        return {"builtin": str(model_ref)}
    try:
        data = json.loads((find_bundle(model_ref) / "provenance.json").read_text())
    except (OSError, ValueError, PawnetError):
        return {}
    counts = data.get("data", {}).get("counts", {})
    return {
        "created": data.get("created"),
        "versions": data.get("versions"),
        "data_fingerprint": data.get("data", {}).get("fingerprint"),
        "photos": {split: sum(c.values()) for split, c in counts.items()
                   if isinstance(c, dict)},
        "metrics": data.get("metrics"),
    }


def create_app(
    model_ref: str | Path | Predictor,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 10.0,
    api_key: str | None = None,
    queue_size: int = QUEUE_SIZE,
    timeout_s: float = TIMEOUT_S,
    max_files: int = MAX_FILES,
    max_pixels: int = MAX_PIXELS,
    cors_origins: Sequence[str] = (),
    model_source: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app serving one model; the model is loaded when the app starts.

    Args:
        model_ref: a run folder, a bundle folder, a built-in name (`imagenet-catdog`), or an
            already loaded `Predictor`.
        max_batch: most images per model call. 1 turns batching off. Defaults to 32.
        max_wait_ms: longest an image waits for others to join its batch. Defaults to 5.
        max_upload_mb: largest request body; larger ones get 413 while still arriving.
            Defaults to 10.
        api_key: when set, every `/v1/*` call must send `Authorization: Bearer <key>`.
            Defaults to None (no key).
        queue_size: most images waiting for the model; beyond it requests get 503 with
            Retry-After. Defaults to 256.
        timeout_s: time limit per request, for the upload and for the model. Defaults to 30.
        max_files: most images per request. Defaults to 32.
        max_pixels: larger images are refused as decompression bombs. Defaults to
            89,478,485.
        cors_origins: origins allowed to call the API from other sites' pages. Defaults to
            none (CORS off).
        model_source: where a `Predictor` given as `model_ref` came from, for the provenance
            shown by `/v1/model`. Defaults to `model_ref`.

    Returns:
        A FastAPI app; run it with uvicorn, or `run(...)`.

    Raises:
        ConfigError: a setting out of range.
    """
    for name, value, low in (("max_batch", max_batch, 1), ("max_wait_ms", max_wait_ms, 0),
                             ("max_upload_mb", max_upload_mb, 0.001),
                             ("queue_size", queue_size, 1), ("timeout_s", timeout_s, 0.001),
                             ("max_files", max_files, 1)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}; received: {name}={value}")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    state: dict = {"ready": False, "metrics": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = (model_ref if isinstance(model_ref, Predictor)
                     else await anyio.to_thread.run_sync(load, model_ref))
        blank = np.zeros((1, predictor.image_size, predictor.image_size, 3), np.uint8)
        # Compiles the model's one function, which then takes any batch size.
        await anyio.to_thread.run_sync(predictor.probabilities, blank)
        batcher = Batcher(predictor.probabilities, max_batch, max_wait_ms / 1000, queue_size)
        metrics = _Metrics(lambda: batcher.depth)
        batcher.on_batch = metrics.batch_size.observe
        batcher.start()
        state.update(predictor=predictor, batcher=batcher, metrics=metrics, ready=True,
                     info=_provenance_summary(model_source or model_ref))
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish; finish their queued images
            state["ready"] = False
            await anyio.to_thread.run_sync(batcher.stop, timeout_s)

    app = FastAPI(title="pawnet", summary="Label photos with a pawnet model.",
                  lifespan=lifespan)
    app.add_middleware(_MetricsMiddleware, metrics=lambda: state["metrics"])
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"])

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 api_key.encode()):
            raise _fail(401, "missing or wrong API key. Try: the header "
                             "'Authorization: Bearer <key>'",
                        {"WWW-Authenticate": "Bearer"})

    def predictor_or_503() -> Predictor:
        if not state["ready"]:
            raise _fail(503, "the model is not loaded yet", {"Retry-After": "1"})
        return state["predictor"]

    async def read_body(request: Request) -> AsyncIterator[bytes]:
        """The request body in chunks, stopping with TooLarge as soon as it passes the limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge(int(declared))
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise TooLarge(received)
            yield chunk

    async def read_uploads(request: Request) -> list[tuple[str, bytes]]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            parser = MultiPartParser(request.headers, read_body(request),
                                     max_files=max_files, max_fields=max_files)
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                if str(exc).startswith("Too many"):
                    raise _fail(413, f"too many files or fields in one request; allowed: "
                                     f"{max_files}. Try: several requests") from None
                raise _fail(400, f"malformed multipart body ({exc})") from None
            try:
                unknown = sorted({k for k in form if k != "file"})
                if unknown:
                    raise _fail(400, f"unknown form field {unknown[0]!r}; allowed: file "
                                     "(repeatable, one image each)")
                values = form.getlist("file")
                if not values:
                    raise _fail(400, "no files: send one or more multipart fields named file")
                uploads = []
                for i, value in enumerate(values):
                    if not isinstance(value, UploadFile):
                        raise _fail(400, "the field 'file' must be a file upload, not text")
                    uploads.append((_upload_name(value.filename, i), await value.read()))
                return uploads
            finally:
                await form.close()
        if kind and not kind.startswith(RAW_TYPES):
            raise _fail(415, f"unsupported content type {kind!r}; allowed: multipart/form-data "
                             "(fields named file), image/*, application/octet-stream. "
                             "Try: curl -F file=@photo.jpg")
        body = b"".join([chunk async for chunk in read_body(request)])
        if not body:
            raise _fail(400, "empty request body: send one image as the body, "
                             "or multipart fields named file")
        return [("<bytes>", body)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz", summary="200 once the model is loaded and warmed up")
    def healthz() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    def metrics_page() -> Response:
        if state["metrics"] is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(state["metrics"].registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=[Depends(check_key)],
             summary="Class names, image size, model name, provenance")
    def model_info() -> dict:
        predictor = predictor_or_503()
        spec = predictor.spec
        return {
            "model_name": spec.model_name,
            "classes": predictor.classes,
            "image_size": predictor.image_size,
            "output": spec.output,
            "resize_method": spec.resize_method,
            "provenance": state["info"],
            "limits": {"max_batch": max_batch, "max_wait_ms": max_wait_ms,
                       "max_upload_mb": max_upload_mb, "max_files": max_files,
                       "timeout_s": timeout_s},
        }

    @app.post(
        "/v1/predict", dependencies=[Depends(check_key)],
        summary="Label one or more photos",
        description="Multipart fields named `file` (repeatable), or one raw image as the "
                    "body. Answers a list like `pawnet predict --format json`. A photo that "
                    "cannot be read gets an `error` entry; when none can, the answer is 422.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )
    async def predict(request: Request) -> list[dict]:
        predictor = predictor_or_503()
        try:
            with anyio.fail_after(timeout_s):
                uploads = await read_uploads(request)
        except TooLarge:  # close the connection, so the rest of the upload is not read
            raise _fail(413, f"upload too large; allowed: {max_upload_mb:g} MB per request. "
                             "Try: smaller photos, or fewer per request",
                        {"Connection": "close"}) from None
        except TimeoutError:
            raise _fail(408, f"the upload took longer than {timeout_s:g} s",
                        {"Connection": "close"}) from None
        except ClientDisconnect:
            raise _fail(400, "the client disconnected during the upload") from None
        names = [name for name, _ in uploads]

        def decode(data: bytes) -> np.ndarray | str:
            try:
                return load_pixels(data, predictor.image_size, max_pixels)
            except ImageError as exc:
                return str(exc)

        decoded = await asyncio.gather(
            *(anyio.to_thread.run_sync(decode, data) for _, data in uploads))
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        metrics: _Metrics = state["metrics"]
        metrics.images.labels("unreadable").inc(len(uploads) - len(ok))
        if not ok:
            reasons = "; ".join(f"{n}: {d}" for n, d in zip(names, decoded, strict=True))
            raise _fail(422, reasons if len(uploads) > 1 else str(decoded[0]))
        try:
            futures = state["batcher"].submit([decoded[i] for i in ok])
        except QueueFull as exc:
            raise _fail(503, f"busy: {exc}. Try: again in a second",
                        {"Retry-After": "1"}) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            rows = await asyncio.wait_for(asyncio.gather(*waiting), timeout_s)
        except TimeoutError:
            raise _fail(503, f"busy: no answer from the model within {timeout_s:g} s",
                        {"Retry-After": "1"}) from None
        metrics.images.labels("predicted").inc(len(ok))
        classes = predictor.classes
        results = [Prediction(name, error=d) if isinstance(d, str) else None
                   for name, d in zip(names, decoded, strict=True)]
        for i, row in zip(ok, rows, strict=True):  # as Predictor.predict does, so the CLI agrees
            results[i] = Prediction(
                names[i], label=classes[int(np.argmax(row))],
                probabilities={c: float(p) for c, p in zip(classes, row, strict=True)})
        return [r.to_dict() for r in results]

    return app


def run(
    model_ref: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 10.0,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Load the model, then serve it with uvicorn until Ctrl-C or SIGTERM.

    The model is loaded before the server starts, so a bad MODEL stops with one `error:`
    line. On SIGTERM the server stops accepting connections, lets in-flight requests finish,
    then exits.

    Raises:
        BundleError: the model cannot be loaded.
        ConfigError: a setting out of range.
    """
    import uvicorn

    predictor = load(model_ref)
    app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_upload_mb=max_upload_mb, api_key=api_key, model_source=model_ref)
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {predictor.spec.model_name} ({', '.join(predictor.classes)}) at "
          f"http://{shown}:{port}/  (API docs at /docs)", flush=True)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host} without an API key; anyone who can reach this "
              "port can use the model. Try: --api-key-env NAME", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=int(TIMEOUT_S) + 5)
