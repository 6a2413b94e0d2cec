"""Heat-maps for the server: a bounded queue of requests and a thread of their own.

A heat-map runs the Keras model forwards and backwards and takes far longer than a label, so
heat-maps get their own thread rather than a token of anyio's pool, which decodes every
request's photos. The queue is bounded in photos: `submit` raises `ExplainQueueFull` beyond
it (the app answers 503 with Retry-After). Each request has one deadline. When it passes, or
its client leaves, the request's photos that have not started are dropped. A request's
photos get their heat-maps `heatmap.BATCH` at a time, grouped by the class they explain.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request

from pawnet.errors import ConfigError, one_line
from pawnet.inference.predictor import Prediction, Predictor
from pawnet.reporting.heatmap import batches
from pawnet.serve.batcher import QueueWorker
from pawnet.serve.uploads import busy, fail

log = logging.getLogger(__name__)

GONE = "the client disconnected before its heat-maps were drawn"


class ExplainQueueFull(Exception):
    """No room for the photos of one more request."""


@dataclass(eq=False)
class ExplainJob:
    """One request's photos, the time its answer is due, and its answer (a list of dicts)."""

    photos: list[tuple[Prediction, np.ndarray]]
    deadline: float  # time.monotonic()
    future: Future = field(default_factory=Future)
    left: int = 0  # photos not started yet
    abandoned: bool = False

    def abandon(self) -> None:
        """The request gave up (timed out, or its client left): start none of the rest."""
        self.abandoned = True
        self.future.cancel()  # only succeeds while the job is still queued

    @property
    def over(self) -> bool:
        return self.abandoned or time.monotonic() >= self.deadline


class Explainer(QueueWorker):
    """One thread that draws the heat-maps of `/v1/explain` requests, one request at a time.

    Args:
        predictor: the model whose Keras model the heat-maps are drawn from.
        queue_size: most photos waiting; `submit` raises `ExplainQueueFull` beyond it.
    """

    def __init__(self, predictor: Predictor, queue_size: int):
        self.predictor = predictor
        self.queue_size = queue_size
        self.refusal: str | None = None  # why this model cannot be explained
        self._jobs: collections.deque[ExplainJob] = collections.deque()
        self._waiting = 0
        super().__init__("pawnet-explain")

    @property
    def depth(self) -> int:
        """Photos waiting for a heat-map."""
        return self._waiting

    def submit(self, photos: list[tuple[Prediction, np.ndarray]], deadline: float
               ) -> ExplainJob:
        """Queue one request's photos, each with its prediction.

        Raises:
            ExplainQueueFull: there is no room for all of them.
        """
        job = ExplainJob(photos, deadline, left=len(photos))
        with self._cond:
            if self._stopping:
                raise ExplainQueueFull("the service is shutting down")
            if self._waiting + job.left > self.queue_size:
                raise ExplainQueueFull(f"{self._waiting} photos already wait for a heat-map "
                                       f"(limit {self.queue_size})")
            self._waiting += job.left
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def _next(self) -> ExplainJob | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            return self._jobs.popleft()

    def _take(self, job: ExplainJob, n: int) -> None:
        with self._cond:
            self._waiting -= n
            job.left -= n

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.future.set_running_or_notify_cancel() and not job.over:
                    self._explain(job)
            except Exception as exc:  # a refusal or a bug: fail this request, keep going
                if not job.future.done():
                    job.future.set_exception(exc)
            finally:
                self._take(job, job.left)
            if not job.future.done():
                job.future.set_exception(TimeoutError("the request was abandoned"))

    def warm_up(self) -> None:
        """Load TensorFlow and the Keras model and draw one heat-map, of a blank photo, so
        that the first request does not wait for all that; a model that cannot be
        explained is noted in `refusal`. Call it before serving: importing TensorFlow
        holds back the process's stderr, and with it the server's log lines."""
        from pawnet.reporting.heatmap import heat_maps

        size = self.predictor.image_size
        try:
            for n in (1, 2):  # the second size traces the pass for any number of photos
                heat_maps(self.predictor.model, np.zeros((n, size, size, 3), np.uint8))
        except ConfigError as exc:
            self.refusal = one_line(exc)
        except Exception:  # a bug: show it, and let the server label photos all the same
            log.warning("no heat-map could be drawn of a blank photo; /v1/explain may fail too",
                        exc_info=True)

    def _explain(self, job: ExplainJob) -> None:
        from pawnet.reporting.explain import answer
        from pawnet.reporting.heatmap import heat_maps

        classes = self.predictor.classes
        index = [classes.index(prediction.top_class) for prediction, _ in job.photos]
        answers: list[dict | None] = [None] * len(job.photos)
        for chunk in batches(index):
            if job.over:
                return  # `_run` fails the request; the rest never starts
            self._take(job, len(chunk))
            pixels = np.stack([job.photos[i][1] for i in chunk])
            found = heat_maps(self.predictor.model, pixels, index[chunk[0]])
            for n, i in enumerate(chunk):
                answers[i] = answer(*job.photos[i], found, n)
        job.future.set_result(answers)


async def heat_maps_of(job: ExplainJob, request: Request, timeout_s: float) -> list[dict]:
    """The job's answers, once drawn; when its deadline passes or the client leaves first,
    the job is abandoned, so none of its photos still waiting is drawn."""
    late = busy(f"no heat-maps within {timeout_s:g} s")
    answer = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({answer, gone}, timeout=max(0.0, job.deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not answer.done():
        job.abandon()
        answer.cancel()
        if gone.done() and not gone.cancelled() and gone.exception() is None:
            raise fail(400, GONE)
        raise late
    try:
        return answer.result()
    except ConfigError as exc:
        raise fail(422, one_line(exc)) from None
    except TimeoutError:
        raise late from None


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
