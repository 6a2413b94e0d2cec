"""The studio's work behind the page, on one worker thread: the model's answer for every
photo, the inbox queue, the data issues, the "how many more photos?" curves, and retraining
from the page, which goes before everything else. Each job says how far it is in `status`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pawnet.config import Config, resolve_config
from pawnet.data.scan import Photo
from pawnet.errors import PawnetError, one_line
from pawnet.run_folder import RunFolder
from pawnet.studio.catalog import NO_CLASS, Catalog

if TYPE_CHECKING:
    from pawnet.models.spec import ModelSpec

log = logging.getLogger(__name__)

ANSWER_CHUNK = 64  # photos labelled between two looks at whether a retrain is waiting
FIRST_SCREEN_S = 2.0  # the jobs wait this long after the page's first photos request
START_WITHIN_S = 10.0  # and start after this many seconds anyway
JOBS_NICENESS = 10  # threads the jobs start (ONNX Runtime's) inherit it
ORDER = ("retrain", "answers", "queue", "issues", "growth")  # what goes first


class Jobs:
    """Runs the studio's jobs in `ORDER` on one thread; `want(name)` asks for one again."""

    def __init__(self, catalog: Catalog, run: Path | None, labels_root: Path, max_pixels: int):
        self.catalog, self.run, self.labels_root = catalog, run, labels_root
        self.max_pixels = max_pixels
        self.previous: Path | None = None
        self.status: dict[str, dict[str, Any]] = {name: {"state": "idle"} for name in ORDER}
        self.growth: dict[str, Any] | None = None
        self.retrained: dict[str, Any] | None = None
        self._wanted: set[str] = set()
        self._ready = threading.Condition()
        self._stop = False
        self._after: threading.Event | None = None
        self._models: dict[Path | None, tuple[Config, ModelSpec] | None] = {}
        self._thread = threading.Thread(target=self._work, name="studio-jobs", daemon=True)

    def start(self, after: threading.Event | None = None) -> None:
        """Start the jobs; with `after`, once it is set (the page's first screen asked
        for) and `FIRST_SCREEN_S` more, or `START_WITHIN_S` at the latest."""
        self._after = after
        for name in ("answers", "queue", "issues", "growth"):
            self.want(name)
        self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stop = True
            self._ready.notify_all()
        self._thread.join(timeout=30)

    def want(self, name: str) -> None:
        with self._ready:
            self._wanted.add(name)
            self.status[name] = {"state": "waiting"}
            self._ready.notify_all()

    def waiting(self, name: str) -> bool:
        with self._ready:
            return name in self._wanted

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # the page's requests go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOBS_NICENESS)
        if self._after is not None and self._after.wait(START_WITHIN_S):
            time.sleep(FIRST_SCREEN_S)  # its thumbnails before the jobs' decoding
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._stop or self._wanted)
                if self._stop:
                    return
                name = next(n for n in ORDER if n in self._wanted)
                self._wanted.discard(name)
            self._run(name, getattr(self, f"_{name}"))

    def _run(self, name: str, job: Callable[[], str | None]) -> None:
        self.status[name] = {"state": "running", "started": time.time()}
        started = time.monotonic()
        try:
            note = job()
        except (PawnetError, OSError, ValueError) as exc:
            log.warning(f"studio: {name} failed: {one_line(exc)}")
            self.status[name] = {"state": "failed", "error": one_line(exc)}
            return
        except Exception as exc:  # a bug: keep the page working, say what happened
            log.exception(f"studio: {name} failed")
            self.status[name] = {"state": "failed", "error": one_line(exc)}
            return
        if self.status[name].get("state") == "running":
            self.status[name] = {"state": "done", "seconds": round(time.monotonic() - started, 2),
                                 **({"note": note} if note else {})}

    # --- the jobs -------------------------------------------------------------------------

    def config(self) -> Config | None:
        """The run's settings, or None without a run."""
        return None if self.run is None else resolve_config(RunFolder(self.run).config)

    def _answers(self) -> str | None:
        if self.run is None:
            return "no run given: start with --run RUN to see the model's answers"
        from pawnet.inference.predictor import load

        predictor = load(self.run, max_pixels=self.max_pixels)
        entries = self.catalog.entries
        for start in range(0, len(entries), ANSWER_CHUNK):
            if self.waiting("retrain"):
                self.want("answers")  # again, for the new run
                self.status["answers"] = {"state": "waiting"}
                return None
            chunk = entries[start:start + ANSWER_CHUNK]
            found = predictor.predict([e.path for e in chunk])
            with self.catalog.lock:
                for entry, prediction in zip(chunk, found, strict=True):
                    entry.answer = prediction.to_dict()
            self.status["answers"]["done"] = start + len(chunk)
            self.status["answers"]["total"] = len(entries)
        return None

    def _frozen(self) -> tuple[Config, ModelSpec] | None:
        """The run's settings and model when it has a frozen pretrained backbone (the
        default), whose features are cached; None without a run, or for a model from
        scratch or fine-tuned. Read once per run."""
        if self.run not in self._models:
            from pawnet.models.registry import get_model_spec

            cfg = self.config()
            spec = None if cfg is None else get_model_spec(cfg.model)
            frozen = spec is not None and spec.pretrained and not cfg.fine_tune
            self._models[self.run] = (cfg, spec) if frozen else None
        return self._models[self.run]

    def fast_retrain(self) -> bool:
        """Whether retraining fits a head on cached features (seconds), not a whole model."""
        return self._frozen() is not None

    def _features(self, photos: list[Photo]) -> np.ndarray | None:
        """The run's backbone features of photos (cached by content), or None for a model
        without a frozen backbone (from scratch, or fine-tuned)."""
        if (model := self._frozen()) is None:
            return None
        from pawnet.features import FeatureStore, cached_features, frozen_backbone

        cfg, spec = model
        frozen = frozen_backbone(spec, cfg.image_size)
        return cached_features(frozen.runtime, FeatureStore(frozen.key), photos,
                               cfg.image_size, cfg.batch_size, "Features", self.max_pixels)

    def _queue(self) -> str | None:
        inbox = [e for e in self.catalog.entries if e.folder_label == NO_CLASS]
        if not inbox:
            return None
        if self.run is None or any(e.answer is None for e in inbox):
            return "needs a run's answers: start with --run RUN"
        from pawnet.studio.growth import queue_order, uncertainty

        classes = self.catalog.classes
        photos = [Photo(e.path, NO_CLASS, None, e.sha256) for e in inbox]
        covered = [p for p in self._known_photos() if p.split == "train"]
        features = self._features(photos + covered)
        probs = np.array([[(e.answer.get("probabilities") or {}).get(c, 0.0) for c in classes]
                          for e in inbox])
        if features is None:  # no features to spread over: by uncertainty alone
            order = np.argsort(-uncertainty(probs), kind="stable")
            why = [None] * len(inbox)
        else:
            queue = queue_order(probs, features[:len(inbox)], features[len(inbox):])
            order = queue.order
            why = [{"uncertainty": float(u), "novelty": float(n)}
                   for u, n in zip(queue.uncertainty, queue.novelty, strict=True)]
        with self.catalog.lock:
            for place, i in enumerate(order):
                inbox[i].queue, inbox[i].why = place + 1, why[i]
        return None

    def _known_photos(self) -> list[Photo]:
        """The labelled photos: those of the folder; for an inbox, those the run trained on
        and the inbox's photos labelled so far."""
        photos = self.catalog.photos()
        if self.run is None or self.labels_root == self.catalog.folder:
            return photos
        from pawnet.data.splits import read_manifest

        trained = [p for p in read_manifest(RunFolder(self.run).manifest)
                   if Path(p.path).is_file()]
        seen = {p.sha256 for p in trained}
        return trained + [p for p in photos if p.sha256 not in seen]

    def _issues(self) -> str | None:
        from pawnet.data.issues import issues_of

        photos = self.catalog.photos()
        classes = sorted({p.label for p in photos})
        if len(classes) < 2 or len(photos) < 4:
            return "needs labelled photos of two classes or more"
        found = issues_of(photos, classes, self.catalog.folder.name)
        with self.catalog.lock:
            self.catalog.set_issues(found)
        return None

    def _growth(self) -> str | None:
        from pawnet.studio.growth import learning_curves

        photos = [p for p in self._known_photos() if p.split in ("train", "val")]
        classes = [c for c in self.catalog.classes if any(p.label == c for p in photos)]
        if len(classes) < 2:
            return "needs labelled photos of two classes or more"
        features = self._features(photos)
        if features is None:
            self.growth = None
            return "needs a run of a frozen pretrained model (the default) with --run RUN"
        y = np.array([classes.index(p.label) if p.label in classes else -1 for p in photos])
        train = np.array([p.split == "train" for p in photos]) & (y >= 0)
        val = np.array([p.split == "val" for p in photos]) & (y >= 0)
        self.growth = learning_curves(features[train], y[train], features[val], y[val], classes)
        return None

    def _retrain(self) -> str | None:
        import pawnet
        from pawnet.tools.runs import compare

        if self.run is None:
            raise PawnetError("retraining needs a run. Try: pawnet studio PHOTOS --run RUN")
        started = time.monotonic()
        base = self.run.with_name(re.sub(r"\d+$", "", self.run.name) or self.run.name)
        new = pawnet.train(self.labels_root, config=RunFolder(self.run).config, verbose=False,
                           labels=str(self.catalog.labels.file), out=str(base))
        seconds = time.monotonic() - started
        assert new is not None  # one process: always the chief
        self.previous, self.run = self.run, new
        self.retrained = {"seconds": round(seconds, 2), **compare([self.previous, new])}
        log.info(f"studio: retrained in {seconds:.1f}s: {one_line(new)}")
        for name in ("answers", "queue", "issues", "growth"):
            self.want(name)
        return None
