"""The batcher's policy with fake models: a lone image runs at once, images that arrive
while the model is busy form the next batch, and a batch of several runs as one-thread
calls on every core."""

from __future__ import annotations

import threading
import time

import numpy as np

from pawnet.serve.batcher import Batcher, batch_rows
from pawnet.serve.settings import ServeSettings


class _RecordingModel:
    """A model that records when it was called and on how many images, optionally held at
    a gate during its first call."""

    def __init__(self, hold_first: bool = False):
        self.calls: list[tuple[float, int]] = []
        self.busy = threading.Event()  # the first call has started
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append((time.monotonic(), len(pixels)))
        self.busy.set()
        self.gate.wait(10)
        return pixels.reshape(len(pixels), -1)[:, :1].astype(float)


def _image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


def test_a_lone_image_runs_without_waiting_for_a_batch_to_fill():
    settings = ServeSettings()
    assert settings.max_wait_ms == 0  # continuous batching is the default
    model = _RecordingModel()
    batcher = Batcher(model, settings.max_batch, settings.max_wait_ms / 1000, queue_size=8)
    batcher.start()
    time.sleep(0.05)  # the batcher is idle, waiting for work
    submitted = time.monotonic()
    assert batcher.submit([_image(3)])[0].result(5)[0] == 3
    batcher.stop(5)
    (called, size), = model.calls
    assert size == 1
    assert called - submitted < 0.2  # a thread hand-off, on a busy machine


def test_a_max_wait_still_holds_a_lone_image_for_others_when_asked_for():
    model = _RecordingModel()
    batcher = Batcher(model, max_batch=8, max_wait_s=0.5, queue_size=8)
    batcher.start()
    submitted = time.monotonic()
    batcher.submit([_image(1)])[0].result(5)
    batcher.stop(5)
    assert model.calls[0][0] - submitted >= 0.45


def test_images_queued_while_the_model_is_busy_form_the_next_batch():
    model = _RecordingModel(hold_first=True)
    batcher = Batcher(model, max_batch=4, max_wait_s=0, queue_size=16)
    batcher.start()
    first = batcher.submit([_image(0)])
    assert model.busy.wait(5)
    later = [f for i in range(1, 7) for f in batcher.submit([_image(i)])]  # six requests
    model.gate.set()
    rows = [f.result(5)[0] for f in first + later]
    batcher.stop(5)
    assert [size for _, size in model.calls] == [1, 4, 2]  # max_batch still applies
    assert rows == list(range(7))


class _FakeRuntime:
    def __init__(self, threads: int):
        self.threads = threads
        self.photos_per_call = 2

    def single_threaded(self) -> _FakeRuntime:
        return _FakeRuntime(1)


class _FakePredictor:
    """`rows` records which runtime ran how many images."""

    def __init__(self):
        self.runtime = _FakeRuntime(2)
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def rows(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append((self.runtime.threads, len(pixels)))
        return pixels[:, 0, 0, :1].astype(float)


def test_a_batch_runs_as_one_thread_calls_and_a_lone_image_as_the_runtime_is_set():
    predictor = _FakePredictor()
    rows = batch_rows(predictor)
    assert rows(np.stack([_image(9)]))[:, 0].tolist() == [9]
    assert predictor.calls == [(2, 1)]
    predictor.calls.clear()
    assert rows(np.stack([_image(i) for i in range(7)]))[:, 0].tolist() == list(range(7))
    assert {threads for threads, _ in predictor.calls} == {1}
    assert max(n for _, n in predictor.calls) <= 2  # the runtime's photos per call
