"""How `pawnet watch` waits between scans of its inbox: file-system events (watchdog) wake
it early, never sooner than MIN_GAP after the last scan; they only wake it, as the rescans
find whatever events miss.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from pawnet.errors import one_line

log = logging.getLogger(__name__)

MIN_GAP = 0.1  # seconds between scans woken by events (a file being written sends many)


class _Waker(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:
        self.wake.set()


def observe(inbox: Path, wake: threading.Event, poll: bool, settle: float):
    """A started watchdog observer that sets `wake` on any change in the inbox, or None
    (`poll`, or events cannot be watched here: the loop rescans instead)."""
    if poll:
        return None
    observer = Observer()
    try:
        observer.schedule(_Waker(wake), str(inbox), recursive=True)
        observer.start()
    except OSError as exc:
        log.warning(f"file-system events cannot be watched in {one_line(inbox)} "
                    f"({one_line(exc)}); rescanning every {settle:g} s instead")
        return None
    return observer


def wait(wake: threading.Event, stop: threading.Event, seconds: float) -> None:
    """Until `seconds` pass, `stop` is set, or `wake` is (but not sooner than MIN_GAP)."""
    started = time.monotonic()
    while not stop.is_set():
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            return
        if wake.wait(min(left, 0.25)) and time.monotonic() - started >= MIN_GAP:
            wake.clear()
            return
        if wake.is_set():
            time.sleep(max(0.0, MIN_GAP - (time.monotonic() - started)))
