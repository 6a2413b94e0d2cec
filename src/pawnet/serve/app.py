"""`pawnet serve`: a REST service and a web page for one model, with dynamic batching.

```
GET  /            the web page: pick or drop photos, see each label and a bar per class
POST /v1/predict  multipart fields named `file` (repeatable), or one raw image as the body
POST /v1/explain  the same uploads; each answer adds its heat-map and an overlay
GET  /v1/model    class names, image size, model name, provenance summary
GET  /healthz     200 once the model is loaded and warmed up, while its worker runs
GET  /metrics     Prometheus text: requests, latency, batch sizes, queue depths, drift
GET  /v1/drift    the last answered photos' labels and OOD scores against the validation
                  photos' (`drift.py`; the routes that label nothing are in `pages.py`)
GET  /docs        the OpenAPI page (its script and style served from here, no CDN)
```

Requests decode their photos in a thread pool with the `Predictor`'s own decoder (the one
training and `pawnet predict` use), then hand the pixels to one `Batcher` thread that
runs the model on every image waiting when it is free: at once for a lone image, in one
batch for those that arrived during the last call. Heat-maps have a thread and a
queue of their own (`Explainer`). Both queues are bounded, so a flood gets 503 with
Retry-After instead of unbounded memory; every request has a time limit (an explain request
one for all of it). Anything a client can send gets a 4xx with a one-line reason, never a
5xx.
"""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from starlette.requests import ClientDisconnect

from pawnet.errors import ImageError
from pawnet.inference.bundle import Bundle
from pawnet.inference.predictor import Prediction, Predictor, load
from pawnet.serve.batcher import Batcher, QueueFull, batch_rows
from pawnet.serve.drift import DriftMonitor, monitor_for
from pawnet.serve.explainer import GONE, Explainer, ExplainQueueFull, heat_maps_of
from pawnet.serve.metrics import Metrics, MetricsMiddleware
from pawnet.serve.pages import add_drift, add_pages
from pawnet.serve.settings import LOOPBACK, ServeSettings
from pawnet.serve.uploads import TooLarge, busy, fail, read_uploads

log = logging.getLogger(__name__)
PREDICT_DOC = {
    "summary": "Label one or more photos",
    "description": "Multipart fields named `file` (repeatable), or one raw image as the body. "
                   "Answers a list like `pawnet predict --json`. A photo that cannot be read "
                   "gets an `error` entry; when none can, the answer is 422.",
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}},
}


EXPLAIN_DOC = {**PREDICT_DOC, "summary": "Label photos and show where the model looked",
               "description": "The same uploads, limits and errors as /v1/predict; each answer "
                              "adds `explained_class`, `heatmap` (rows of 0..1), its "
                              "`resolution` [rows, columns] and `method`, and "
                              "`overlay` (a PNG data URL of the photo with the map over it)."}


@dataclass
class _State:
    """What the app holds once its lifespan has started."""

    predictor: Predictor | None = None
    batcher: Batcher | None = None
    explainer: Explainer | None = None
    metrics: Metrics | None = None
    drift: DriftMonitor | None = None
    drift_failed: bool = False  # the monitor raised once: logged then, not again
    ready: bool = False


def provenance_summary(bundle: Bundle) -> dict:
    """What `/v1/model` tells about where the model came from."""
    data = bundle.provenance
    if "builtin" in data or not data:
        return dict(data)
    photos = data.get("data") if isinstance(data.get("data"), dict) else {}
    counts = photos.get("counts") if isinstance(photos.get("counts"), dict) else {}
    return {
        "created": data.get("created"),
        "versions": data.get("versions"),
        "data_fingerprint": photos.get("fingerprint"),
        "photos": {split: sum(n for n in c.values() if isinstance(n, int))
                   for split, c in counts.items() if isinstance(c, dict)},
        "metrics": data.get("metrics"),
    }


def serving_predictor(model: str | Path | Predictor, settings: ServeSettings) -> Predictor:
    """The predictor a server runs: `pawnet.load` of `model` (a copy of a given
    `Predictor`, which keeps its runtime when `settings.runtime` is "auto" and its minimum
    confidence when `settings.min_confidence` is None) with the settings' runtime,
    test-time augmentation, minimum confidence, pixel limit and batch size. The one way
    `run` and `create_app` get theirs.

    Raises:
        BundleError: the model cannot be loaded.
        ConfigError: an unknown runtime, or one that is not installed.
    """
    return load(model, batch_size=settings.max_batch, max_pixels=settings.max_pixels,
                runtime=settings.runtime, tta=settings.tta,
                min_confidence=settings.min_confidence)


def _lifespan(model: str | Path | Predictor, settings: ServeSettings, state: _State):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = await anyio.to_thread.run_sync(serving_predictor, model, settings)
        batcher = Batcher(batch_rows(predictor), settings.max_batch,
                          settings.max_wait_ms / 1000, settings.queue_size)
        shape = (predictor.image_size, predictor.image_size, 3)
        await anyio.to_thread.run_sync(batcher.warm_up, shape)
        explainer = Explainer(predictor, settings.explain_queue_size)
        await anyio.to_thread.run_sync(explainer.warm_up)
        state.drift = monitor_for(predictor, settings.drift_window)
        state.metrics = Metrics(lambda: batcher.depth, lambda: explainer.depth,
                                state.drift.gauges)
        batcher.on_batch = state.metrics.batch_size.observe
        batcher.start()
        explainer.start()
        state.predictor, state.batcher, state.explainer = predictor, batcher, explainer
        state.ready = True
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish; finish their queued images
            state.ready = False
            await anyio.to_thread.run_sync(batcher.stop, settings.timeout_s)
            await anyio.to_thread.run_sync(explainer.stop, settings.timeout_s)

    return lifespan


def create_app(model: str | Path | Predictor, settings: ServeSettings | None = None
               ) -> FastAPI:
    """The FastAPI app serving one model; the model is loaded when the app starts.

    Args:
        model: a run folder, a bundle folder, a built-in name (`imagenet-catdog`), or an
            already loaded `Predictor`.
        settings: limits, batching and the API key. Defaults to `ServeSettings()`.

    Returns:
        A FastAPI app; run it with uvicorn, or `run(...)`.
    """
    settings = settings or ServeSettings()
    state = _State()
    app = FastAPI(title="pawnet", summary="Label photos with a pawnet model.",
                  lifespan=_lifespan(model, settings, state), docs_url=None, redoc_url=None)
    app.state.pawnet = state  # predictor, batcher, explainer: for tests and embedding apps
    app.add_middleware(MetricsMiddleware, metrics=lambda: state.metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"])
    add_pages(app, state)
    _add_api(app, settings, state)
    return app


def _add_api(app: FastAPI, settings: ServeSettings, state: _State) -> None:
    api_key = settings.api_key()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 api_key.encode()):
            raise fail(401, "missing or wrong API key. Try: the header "
                            "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})

    def ready() -> Predictor:
        if not state.ready:
            raise fail(503, "the model is not loaded yet", {"Retry-After": "1"})
        return state.predictor

    @app.get("/v1/model", dependencies=[Depends(check_key)],
             summary="Class names, image size, model name, provenance")
    def model_info() -> dict:
        predictor = ready()
        spec = predictor.spec
        return {
            "model_name": spec.model_name,
            "classes": predictor.classes,
            "image_size": predictor.image_size,
            "output": spec.output,
            "resize_method": spec.resize_method,
            "runtime": predictor.runtime.name,
            "tta": predictor.tta,
            "min_confidence": predictor.min_confidence,
            "ood_threshold": spec.ood_threshold, "min_side": spec.min_side,
            "provenance": provenance_summary(predictor.bundle),
            "limits": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                       "max_upload_mb": settings.max_upload_mb,
                       "max_files": settings.max_files, "timeout_s": settings.timeout_s,
                       "explain_queue_size": settings.explain_queue_size},
        }

    async def labelled(request: Request, time_left: Callable[[], float]) -> list:
        """The request's photos as (name, pixels or the `ImageError` saying why they
        cannot be read, their prediction or None), within the limits, labelled by the
        batcher; the upload and the model each get `time_left()` seconds."""
        predictor = ready()
        uploads = await _uploads(request, settings, time_left())
        return await _label(predictor, state, settings, uploads, time_left())

    @app.post("/v1/predict", dependencies=[Depends(check_key)], **PREDICT_DOC)
    async def predict(request: Request) -> list[dict]:
        photos = await labelled(request, lambda: settings.timeout_s)
        # /v1/explain is left out: its photos are mostly ones a client had labelled already
        _watch(state, [prediction for _, _, prediction in photos if prediction is not None])
        return [(Prediction(name, error=str(d)) if found is None else found).to_dict()
                for name, d, found in photos]

    _add_explain(app, settings, state, labelled, check_key)
    add_drift(app, state, check_key)


def _add_explain(app: FastAPI, settings: ServeSettings, state: _State, labelled,
                 check_key) -> None:
    """`POST /v1/explain`: the labels of `/v1/predict`, each with its heat-map."""

    @app.post("/v1/explain", dependencies=[Depends(check_key)], **EXPLAIN_DOC)
    async def explain(request: Request) -> list[dict]:
        deadline = time.monotonic() + settings.timeout_s
        explainer = state.explainer
        if explainer is not None and explainer.refusal is not None:
            raise fail(422, explainer.refusal)
        if explainer is not None and explainer.depth >= explainer.queue_size:
            raise busy(f"{explainer.depth} photos already wait for a heat-map. Try: again "
                       "in a second")  # the upload is left unread
        photos = await labelled(request, lambda: max(0.0, deadline - time.monotonic()))
        readable = [(prediction, d) for _, d, prediction in photos if prediction is not None]
        if len(readable) > state.explainer.queue_size:
            raise fail(413, f"too many photos to explain at once; allowed: "
                            f"{state.explainer.queue_size}. Try: fewer photos per request")
        if await request.is_disconnected():
            raise fail(400, GONE)
        try:
            job = state.explainer.submit(readable, deadline)
        except ExplainQueueFull as exc:
            raise busy(f"{exc}. Try: again in a second") from None
        heat_maps = iter(await heat_maps_of(job, request, settings.timeout_s))
        return [Prediction(name, error=str(d)).to_dict() if prediction is None
                else next(heat_maps)
                for name, d, prediction in photos]


def _watch(state: _State, predictions: list[Prediction]) -> None:
    """Put a request's answers in the drift monitor. A fault in it is logged once and
    costs the client nothing: the answers are ready."""
    try:
        state.drift.add(predictions)
    except Exception:
        if not state.drift_failed:
            state.drift_failed = True
            log.exception("drift: the monitor failed; answers are still sent, but /v1/drift "
                          "and the drift gauges may be stale (logged once). Try: restart the "
                          "server, and report the traceback below as a pawnet bug")


async def _uploads(request: Request, settings: ServeSettings, limit_s: float
                   ) -> list[tuple[str, bytes]]:
    """The request's photos, within the size and time limits."""
    max_bytes = int(settings.max_upload_mb * 1024 * 1024)
    try:
        with anyio.fail_after(limit_s):
            return await read_uploads(request, max_bytes, settings.max_files)
    except TooLarge:  # fail() closes the connection, so the rest of the upload is not read
        raise fail(413, f"upload too large; allowed: {settings.max_upload_mb:g} MB per "
                        "request. Try: smaller photos, or fewer per request") from None
    except TimeoutError:
        raise fail(408, f"the upload took longer than {settings.timeout_s:g} s") from None
    except ClientDisconnect:
        raise fail(400, "the client disconnected during the upload") from None


async def _label(predictor: Predictor, state: _State, settings: ServeSettings,
                 uploads: list[tuple[str, bytes]], limit_s: float) -> list:
    """(name, pixels or the `ImageError` saying why they cannot be read, prediction or
    None) per upload: decoded in the thread pool, run by the batcher within `limit_s`."""
    sized = await asyncio.gather(*(anyio.to_thread.run_sync(predictor.decode_or_error, data)
                                   for _, data in uploads))
    decoded = [d if isinstance(d, ImageError) else d[0] for d in sized]
    rows = await _run_model(state, settings, [name for name, _ in uploads], decoded, limit_s)
    return [(name, d, None if isinstance(d, ImageError)
             else predictor.prediction(name, next(rows), s[1]))
            for (name, _), d, s in zip(uploads, decoded, sized, strict=True)]


async def _run_model(state: _State, settings: ServeSettings, names: list[str],
                     decoded: list[np.ndarray | ImageError], limit_s: float):
    """Probabilities of the readable photos, in order, from the batcher."""
    ok = [d for d in decoded if not isinstance(d, ImageError)]
    state.metrics.images.labels("unreadable").inc(len(decoded) - len(ok))
    if not ok:
        reasons = "; ".join(f"{n}: {d}" for n, d in zip(names, decoded, strict=True))
        raise fail(422, reasons if len(decoded) > 1 else str(decoded[0]))
    try:
        futures = state.batcher.submit(ok)
    except QueueFull as exc:
        raise busy(f"{exc}. Try: again in a second") from None
    try:
        rows = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                      limit_s)
    except TimeoutError:
        raise busy(f"no answer from the model within {settings.timeout_s:g} s") from None
    state.metrics.images.labels("predicted").inc(len(ok))
    return iter(rows)


def _return_freed_memory(arenas: int = 2) -> None:
    """Let the server's many threads share `arenas` glibc malloc arenas, and give blocks of
    1 MB or more straight back to the system when freed. Otherwise memory freed after
    decoding a large image stays in its thread's arena, and the server's peak grows with
    every thread that decoded one (docs/decisions.md)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(-8, arenas)  # M_ARENA_MAX
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def run(model: str | Path, settings: ServeSettings | None = None) -> None:
    """Load the model, then serve it with uvicorn until Ctrl-C or SIGTERM.

    The model is loaded before the server starts, so a bad MODEL stops with one `error:`
    line. On SIGTERM the server stops accepting connections, lets in-flight requests finish,
    then exits.

    Raises:
        BundleError: the model cannot be loaded.
        ConfigError: a setting out of range, or an API key variable that is not set.
    """
    import uvicorn

    from pawnet.serve.http import header_timeout_protocol

    settings = settings or ServeSettings()
    _return_freed_memory()
    predictor = serving_predictor(model, settings)
    app = create_app(predictor, settings)
    host = settings.host
    shown = f"[{host}]" if ":" in host else host
    log.info(f"Serving {predictor.spec.model_name} ({', '.join(predictor.classes)}) at "
             f"http://{shown}:{settings.port}/  (API docs at /docs)")
    if settings.api_key_env is None and host not in LOOPBACK:
        log.warning(f"listening on {host} without an API key; anyone who can reach this "
                    "port can use the model. Try: --api-key-env NAME")
    uvicorn.run(app, host=host, port=settings.port, log_level=settings.log_level,
                http=header_timeout_protocol(settings.header_timeout_s),
                timeout_keep_alive=settings.keep_alive_s,
                limit_concurrency=settings.max_connections,
                timeout_graceful_shutdown=int(settings.timeout_s) + 5)
