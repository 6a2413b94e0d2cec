"""Dynamic batching: one thread runs the model on images gathered from concurrent requests."""

from __future__ import annotations

import collections
import copy
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pawnet.inference.runtimes import on_every_core

if TYPE_CHECKING:
    from pawnet.inference.predictor import Predictor

WARM_UP_SIZES = 64  # batch sizes run once at start-up (beyond it, rare sizes warm up live)


class QueueFull(Exception):
    """The batcher has no room for the images of one more request."""


@dataclass
class _Job:
    pixels: np.ndarray  # (size, size, 3) uint8
    future: Future
    enqueued: float


class QueueWorker:
    """One daemon thread named `name` that runs `self._run`, with the condition its queue
    is guarded by; `stop` lets it finish the work already queued."""

    def __init__(self, name: str):
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the work already queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


def batch_rows(predictor: Predictor) -> Callable[[np.ndarray], np.ndarray]:
    """`predictor.rows` for the batcher: a lone image runs as the runtime is set up (on ONNX
    Runtime, one call on every core); a batch of several runs as one-thread calls on every
    core at once, a few images each, which spares the threads of one call waiting for each
    other (docs/decisions.md, "Continuous batching")."""
    single = getattr(predictor.runtime, "single_threaded", None)
    if single is None:  # Keras, LiteRT: one call for the whole batch
        return predictor.rows
    one_thread = copy.copy(predictor)  # the same settings, on the one-thread session
    one_thread.runtime = single()
    per_call = one_thread.runtime.photos_per_call

    def rows(pixels: np.ndarray) -> np.ndarray:
        if len(pixels) < 2:
            return predictor.rows(pixels)
        parts = on_every_core(lambda chunk: one_thread.rows(pixels[chunk.start : chunk.stop]),
                              len(pixels), per_call)
        return np.concatenate(parts)

    return rows


class Batcher(QueueWorker):
    """One thread that runs the model on images gathered from concurrent requests.

    Continuous batching: when the model is free, the next call takes every waiting image
    (at most `max_batch`), so a lone image runs at once, and images that arrive while the
    model is busy form the next batch. `max_wait_s` > 0 makes the oldest image wait up to
    that long for others to join before a call that would not be full (for runtimes whose
    batches are much cheaper per image). Images whose request gave up (timed out,
    disconnected) are dropped before the model call.

    Args:
        predict_fn: uint8 images `(N, size, size, 3)` -> probabilities `(N, classes)`.
        max_batch: most images per model call.
        max_wait_s: longest an image waits for others to join its batch; 0: no wait.
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
        super().__init__("pawnet-batcher")

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def warm_up(self, image_shape: tuple[int, ...]) -> None:
        """Run every batch size once before serving: a runtime's first call at a new size
        sets it up (kernels, memory plans) and takes up to twice as long, which would land
        in the latency tail of the first requests that happen to form that size."""
        for size in range(1, min(self.max_batch, WARM_UP_SIZES) + 1):
            self.predict_fn(np.zeros((size, *image_shape), np.uint8))

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
        """What waits now (at most `max_batch`), once something does; None when stopping
        with nothing left."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            if self.max_wait_s > 0:
                self._wait_to_fill(self._jobs[0].enqueued + self.max_wait_s)
            return [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]

    def _wait_to_fill(self, deadline: float) -> None:
        """Wait, holding `_cond`, until a batch is full, `deadline` passes or stop."""
        while len(self._jobs) < self.max_batch and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    @property
    def alive(self) -> bool:
        """Whether the thread that runs the model is running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                probs = self.predict_fn(np.stack([job.pixels for job in batch]))
                for job, row in zip(batch, probs, strict=True):
                    job.future.set_result(row)
                self.on_batch(len(batch))
            except Exception as exc:  # a bug or a broken model: fail these requests, keep going
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
