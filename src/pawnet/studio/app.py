"""`pawnet studio`: one local page to review, relabel, exclude and grow a folder of photos,
and retrain on the decisions in seconds.

```
GET  /                        the page (its script and style served from here, no CDN)
GET  /api/state               classes and their keys, counts, the jobs' progress, retraining
GET  /api/photos              ids matching filters (label, split, issue, answer, decided, q),
                              in an order (name, queue, issue, confidence), a page at a time
GET  /api/photos/{id}         one photo: its label, split, answer and probabilities, issues
GET  /api/photos/{id}/thumb   a thumbnail (made on demand, cached by content)
GET  /api/photos/{id}/image   the photo shrunk to 1024 px
GET  /api/photos/{id}/explain where the model looked: its heat-map over the photo
POST /api/photos/{id}/label   {"label": CLASS | "exclude" | null}: written to the labels file
POST /api/undo                take back the last decision
POST /api/retrain             train again with the decisions (202); its result in /api/state
GET  /api/growth              "how many more photos?": learning curves per class, and advice
```

Photos are named by id only (`Catalog`). Requests must come to a loopback name when the
studio listens on loopback, and changes must be JSON, so neither another site's page nor a
rebound DNS name can use the studio through the person's browser.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from pawnet.data.labels import EXCLUDE
from pawnet.errors import ImageError, PawnetError, one_line
from pawnet.serve.settings import LOOPBACK
from pawnet.studio.catalog import Catalog, Entry, class_keys
from pawnet.studio.jobs import Jobs
from pawnet.studio.thumbs import Thumbnails

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FILTERS = ("label", "split", "issue", "answer", "decided", "q")
ORDERS = ("name", "queue", "issue", "confidence")
MAX_PAGE = 500  # photos per /api/photos answer
MAX_BODY = 16 * 1024  # bytes of a JSON request


@dataclass
class Studio:
    """What the page works on: the catalog, its jobs, thumbnails, and the heat-maps' model."""

    catalog: Catalog
    jobs: Jobs
    thumbs: Thumbnails
    loopback: bool = True
    first_page: threading.Event = field(default_factory=threading.Event)
    _explainer: tuple[Path, Any] | None = None  # (run, its Keras predictor)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock)

    def explain(self, entry: Entry) -> dict[str, Any]:
        """The heat-map of the current run's answer for one photo (TensorFlow starts on the
        first)."""
        from pawnet.inference.predictor import load
        from pawnet.reporting.explain import explained

        run = self.jobs.run
        if run is None:
            raise PawnetError("no model to explain. Try: pawnet studio PHOTOS --run RUN")
        with self._explain_lock:
            if self._explainer is None or self._explainer[0] != run:
                self._explainer = None  # the last run's model goes before the next loads
                self._explainer = (run, load(run, runtime="keras"))
            predictor = self._explainer[1]
            pixels, size = predictor.decode_sized(entry.path)
            prediction = predictor.prediction(entry.name, predictor.rows(pixels[None])[0], size)
            found = explained(predictor, prediction, pixels)
        found["path"] = entry.name
        return found


def _fail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": one_line(message)}, status_code=status)


def _entry(studio: Studio, photo_id: str) -> Entry | JSONResponse:
    entries = studio.catalog.entries
    if not (photo_id.isascii() and photo_id.isdecimal() and len(photo_id) < 10
            and int(photo_id) < len(entries)):
        return _fail(404, f"no photo with id {photo_id[:40]!r}: ids are 0 to {len(entries) - 1}")
    return entries[int(photo_id)]


def _state(studio: Studio) -> dict[str, Any]:
    catalog, jobs = studio.catalog, studio.jobs
    return {"folder": catalog.folder.name, "classes": catalog.classes,
            "keys": class_keys(catalog.classes), "inbox": catalog.inbox,
            "labels_file": catalog.labels.file.name,
            "run": None if jobs.run is None else jobs.run.name,
            "previous": None if jobs.previous is None else jobs.previous.name,
            "fast_retrain": jobs.fast_retrain(),
            "counts": catalog.counts(), "jobs": jobs.status, "retrained": jobs.retrained}


def _guard(studio: Studio):
    async def guard(request: Request, call_next):
        host = request.url.hostname or ""
        if studio.loopback and host not in LOOPBACK:
            return _fail(403, f"the studio answers on 127.0.0.1 or localhost, not {host!r}")
        if request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/json"):
                return _fail(415, "send JSON (Content-Type: application/json)")
            length = request.headers.get("content-length") or "0"
            if not length.isdecimal() or int(length) > MAX_BODY:
                return _fail(413, f"request body over {MAX_BODY} bytes")
        return await call_next(request)
    return guard


async def _json(request: Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when the body is not one."""
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def create_app(studio: Studio) -> FastAPI:
    """The studio's routes over one `Studio` (whose jobs the caller starts)."""
    app = FastAPI(title="pawnet studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(_guard(studio))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "studio.html")

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return _state(studio)

    _photo_routes(app, studio)
    _decision_routes(app, studio)
    return app


def _photo_routes(app: FastAPI, studio: Studio) -> None:
    catalog = studio.catalog

    @app.get("/api/photos")
    def photos(request: Request, order: str = "name", offset: int = 0, limit: int = 100):
        if order not in ORDERS:
            return _fail(400, f"order must be one of {', '.join(ORDERS)}, not {order[:40]!r}")
        want = {k: request.query_params.get(k, "") for k in FILTERS}
        found = catalog.query(want, order)
        studio.first_page.set()
        offset, limit = max(0, offset), min(max(1, limit), MAX_PAGE)
        return {"total": len(found),
                "items": [catalog.item(e) for e in found[offset:offset + limit]]}

    @app.get("/api/photos/{photo_id}")
    def photo(photo_id: str):
        entry = _entry(studio, photo_id)
        return entry if isinstance(entry, JSONResponse) else catalog.item(entry, detail=True)

    @app.get("/api/photos/{photo_id}/thumb")
    async def thumb(photo_id: str):
        return await _image(studio, photo_id, lambda e: studio.thumbs.thumbnail(e.path, e.sha256),
                            "max-age=86400")

    @app.get("/api/photos/{photo_id}/image")
    async def image(photo_id: str):
        return await _image(studio, photo_id, lambda e: studio.thumbs.preview(e.path), "no-cache")

    @app.get("/api/photos/{photo_id}/explain")
    async def explain(photo_id: str):
        entry = _entry(studio, photo_id)
        if isinstance(entry, JSONResponse):
            return entry
        try:
            return await anyio.to_thread.run_sync(studio.explain, entry)
        except (PawnetError, ImageError, OSError) as exc:
            return _fail(422, str(exc))


def _decision_routes(app: FastAPI, studio: Studio) -> None:
    catalog = studio.catalog

    @app.post("/api/photos/{photo_id}/label")
    async def label(photo_id: str, request: Request):
        entry = _entry(studio, photo_id)
        if isinstance(entry, JSONResponse):
            return entry
        body = await _json(request)
        wanted = "" if body is None else body.get("label", "")
        if wanted is not None and wanted not in (*catalog.classes, EXCLUDE):
            return _fail(400, f"send {{\"label\": L}}, L one of {', '.join(catalog.classes)}, "
                              f"{EXCLUDE} or null; received {str(body)[:60]!r}")
        return await anyio.to_thread.run_sync(_write, catalog, entry.keys, wanted, entry)

    @app.post("/api/undo")
    def undo():
        return _write(catalog, None, None, None)

    @app.post("/api/retrain", status_code=202)
    def retrain():
        if studio.jobs.run is None:
            return _fail(409, "retraining needs a run. Try: pawnet studio PHOTOS --run RUN")
        studio.jobs.want("retrain")
        return studio.jobs.status["retrain"]

    @app.get("/api/growth")
    def growth():
        return {"status": studio.jobs.status["growth"], "curves": studio.jobs.growth}


def _write(catalog: Catalog, keys: list[str] | None, label: str | None, entry: Entry | None):
    """A decision (or, without `keys`, an undo) written to the labels file; the photo as the
    page shows it now, or a 503 saying that nothing changed."""
    try:
        with catalog.lock:
            if keys is not None:
                catalog.labels.decide(keys, label)
            else:
                key = catalog.labels.undo()
                entry = None if key is None else catalog.by_key.get(key)
    except OSError as exc:
        return _fail(503, f"cannot write the labels file {catalog.labels.file.name} "
                          f"({exc.strerror or exc}); nothing was changed. Try: free disk space "
                          "or make it writable")
    item = None if entry is None else catalog.item(entry)
    return item if keys is not None else {"undone": item}


async def _image(studio: Studio, photo_id: str, make, cache: str) -> Response:
    entry = _entry(studio, photo_id)
    if isinstance(entry, JSONResponse):
        return entry
    try:
        data = await anyio.to_thread.run_sync(make, entry)
    except ImageError as exc:
        return _fail(422, f"{entry.name}: {exc}")
    except OSError as exc:  # moved, deleted or made unreadable since the scan
        return _fail(404, f"{entry.name} cannot be read any more ({exc.strerror or exc})")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})


def _run_folder(run: str | Path | None) -> Path | None:
    from pawnet.run_folder import RunFolder

    if run is None:
        return None
    folder = RunFolder(Path(run).resolve())
    if not folder.is_run() or not folder.bundle.is_dir():
        raise PawnetError(f"{one_line(run)} is not a training run with a model. Try: --run "
                          "runs/train (a folder pawnet train wrote)")
    return folder.path


def open_studio(photos: str | Path, run: str | Path | None = None,
                labels: str | Path | None = None, max_pixels: int | None = None) -> Studio:
    """Scan a folder (photos without a class kept, as the inbox) and open its labels file.
    The scan is the one training makes (and caches); decoding has `pawnet serve`'s limit
    unless `max_pixels` says otherwise.

    Args:
        photos: a folder of photos in any layout `pawnet train` reads, or an inbox of
            photos without classes next to a run (`run` needed then).
        run: a training run: its model answers, and retraining starts from its settings.
        labels: the labels file, created at the first decision. Defaults to
            `<folder>-labels.csv` in the current folder, where the folder is the one
            trained on: `photos`, or for an inbox the run's.

    Raises:
        DataError: no photos, or no classes (an inbox without a run).
        PawnetError: `run` is not a run folder, or the labels file is damaged.
    """
    from pawnet.config import resolve_config
    from pawnet.data.labels import LabelsFile
    from pawnet.data.scan import scan
    from pawnet.data.splits import assign_splits
    from pawnet.errors import DataError
    from pawnet.run_folder import RunFolder
    from pawnet.serve.settings import SERVE_MAX_PIXELS

    run_dir = _run_folder(run)
    cfg = resolve_config(RunFolder(run_dir).config if run_dir else None)
    found = scan(photos, max_pixels=cfg.max_pixels, unlabelled=True)  # as training scans
    max_pixels = max_pixels or min(cfg.max_pixels, SERVE_MAX_PIXELS)  # decoding's limit
    classes, root = _classes_and_root(found, run_dir)
    if len(classes) < 2:
        raise DataError(f"{one_line(photos)} has no classes to label with. Try: class folders, "
                        "or --run RUN for an inbox of new photos")
    labels_file = LabelsFile(labels or Path.cwd() / f"{root.name}-labels.csv")
    split = assign_splits(found.photos, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    catalog = Catalog(Path(found.root), split, classes, labels_file, root, found.duplicates)
    return Studio(catalog, Jobs(catalog, run_dir, root, max_pixels), Thumbnails(max_pixels))


def _classes_and_root(found, run_dir: Path | None) -> tuple[list[str], Path]:
    """The classes to label with, and the folder the labels file is relative to (the one
    retraining trains on). With a run, a folder other than the one it trained on that holds
    photos without a class is an inbox: all its photos are to be labelled, relative to the
    run's folder. The photos of `found` lose the classes that do not count."""
    folder = Path(found.root)
    if run_dir is None:
        return list(found.classes), folder
    from pawnet.inference.bundle import resolve

    own = resolve(run_dir).spec.class_names
    if "file-names" in found.layout:  # IMG_0001.jpg names no class of the model's
        found.photos = [p if p.label in own else replace(p, label="") for p in found.photos]
    root = folder
    if any(not p.label for p in found.photos) and (trained_on := _trained_on(run_dir)) != folder:
        found.photos = [replace(p, label="") for p in found.photos]
        root = trained_on
    found.classes = sorted({p.label for p in found.photos} - {""})
    return [*own, *sorted(set(found.classes) - set(own))], root


def _trained_on(run_dir: Path) -> Path:
    """The folder a run trained on, as its scan recorded it (`data.json`'s root).

    Raises:
        PawnetError: the run does not say, or that folder is gone.
    """
    import json

    from pawnet.run_folder import RunFolder
    from pawnet.storage import read_text_file

    try:
        root = Path(json.loads(read_text_file(RunFolder(run_dir).data))["root"])
    except (OSError, ValueError, KeyError, TypeError):
        root = None
    if root is None or not root.is_dir():
        raise PawnetError(f"the folder {one_line(run_dir)} trained on is not known or gone "
                          "(its data.json). Try: pawnet studio THAT_FOLDER --run RUN")
    return root


def run(photos: str | Path, run_dir: str | Path | None = None, labels: str | Path | None = None,
        host: str = "127.0.0.1", port: int = 8000) -> None:
    """Open the studio and serve its page until Ctrl-C or SIGTERM."""
    import uvicorn

    from pawnet.serve.http import header_timeout_protocol

    studio = open_studio(photos, run_dir, labels)
    studio.loopback = host in LOOPBACK
    app = create_app(studio)
    shown = f"[{host}]" if ":" in host else host
    catalog = studio.catalog
    log.info(f"Studio: {len(catalog.entries)} photos of {one_line(catalog.folder)}; decisions go "
             f"to {one_line(catalog.labels.file)}. Open http://{shown}:{port}/")
    if not studio.loopback:
        log.warning(f"listening on {host}: anyone who can reach this port can see the photos "
                    "and change the labels file. Try: --host 127.0.0.1")
    studio.jobs.start(after=studio.first_page)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning",
                    http=header_timeout_protocol(10.0), timeout_keep_alive=5)
    finally:
        studio.jobs.stop()
