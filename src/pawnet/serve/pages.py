"""The routes of `pawnet serve` that label no photo: the web page and the API docs page,
and what the service tells about itself (`/healthz`, `/metrics`, `/v1/drift`)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pawnet.serve.uploads import fail

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"  # Swagger UI's script, style and icon, from fastapi-offline
DRIFT_DOC = {
    "summary": "The last answered photos against the validation photos",
    "description": "Each label's share in the window (a class, `unsure`, `neither`) with "
                   "validation's and the range it makes plausible, the Kolmogorov-Smirnov "
                   "test of the window's OOD scores against validation's, and the alert "
                   "(docs/serving.md, Drift).",
}


def add_pages(app: FastAPI, state: Any) -> None:
    """`/`, `/docs`, `/healthz` and `/metrics`, reading the app's `state` (`_State`)."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title="pawnet API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})  # else it asks swagger.io

    # async: answered on the event loop, never waiting for a thread of the busy pool
    @app.get("/healthz", summary="200 once the model is loaded and warmed up")
    async def healthz() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": "1"})
        if state.batcher is not None and not state.batcher.alive:
            return JSONResponse({"status": "the model's worker thread has stopped"},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics_page() -> Response:
        if state.metrics is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def add_drift(app: FastAPI, state: Any, check_key: Callable[[Request], None]) -> None:
    """`GET /v1/drift`: the drift monitor's summary (`pawnet.serve.drift`)."""

    @app.get("/v1/drift", dependencies=[Depends(check_key)], **DRIFT_DOC)
    def drift() -> dict:
        if state.drift is None:
            raise fail(503, "the model is not loaded yet", {"Retry-After": "1"})
        return state.drift.summary()
