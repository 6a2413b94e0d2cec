"""What pawnet tells people while it works: one `logging` logger per module under
`pawnet`, shown by the CLI and by the public functions' `verbose=`, and progress bars.

A line is one line (names in it stay on it) and a warning starts with `warning:`. The
inference and reporting packages' lines go to stderr: they run under commands whose stdout is
data (`predict`, `evaluate --json`, `export --json`); the rest go to stdout.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar

from pawnet.errors import one_line

ROOT = "pawnet"
TO_STDERR = ("pawnet.inference", "pawnet.reporting")
STARTED = time.monotonic()  # about when the process started: pawnet is imported first
_TIMES: ContextVar[dict[str, float] | None] = ContextVar("pawnet_times", default=None)


class Console(logging.Handler):
    """Writes each record as one line to the stream of the moment (so redirections and
    test runners that swap `sys.stdout` see it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = one_line(record.getMessage())
        return f"warning: {line}" if record.levelno == logging.WARNING else line

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.name.startswith(TO_STDERR) else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # what logging.Handler promises: report it, never raise
            self.handleError(record)


@contextlib.contextmanager
def console() -> Iterator[None]:
    """The CLI's logging for one command: pawnet's INFO lines and warnings on the terminal,
    as `print` would write them; as it was before once the command ends."""
    logger = logging.getLogger(ROOT)
    handler, level = Console(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def verbosity(verbose: bool) -> Iterator[None]:
    """Within the block pawnet's INFO lines are shown (`verbose`) or held back; warnings
    always pass. They go to the console unless a handler is already there for them: the
    CLI's, or the application's own logging configuration, which then decides."""
    logger = logging.getLogger(ROOT)
    level, console = logger.level, None
    if not logger.handlers and not logging.getLogger().handlers:
        console = Console()
        logger.addHandler(console)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if console is not None:
            logger.removeHandler(console)


@contextlib.contextmanager
def timings() -> Iterator[dict[str, float]]:
    """Collects the seconds of the `timed` steps run within the block, by step."""
    token = _TIMES.set({})
    try:
        yield _TIMES.get()
    finally:
        _TIMES.reset(token)


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    """Adds the block's wall time to `step` in the `timings` being collected, if any."""
    started = time.monotonic()
    try:
        yield
    finally:
        times = _TIMES.get()
        if times is not None:
            times[step] = times.get(step, 0.0) + time.monotonic() - started


def breakdown(times: dict[str, float], total: float) -> str:
    """One line: where `total` seconds went, step by step, in the order they ran."""
    steps = ", ".join(f"{step} {seconds:.2f}s" for step, seconds in times.items())
    other = total - sum(times.values())
    return f"Time: {steps}, other {other:.2f}s; total {total:.2f}s"


def shown() -> bool:
    """Whether pawnet's INFO lines are shown now (Keras' own progress follows them)."""
    return logging.getLogger(ROOT).isEnabledFor(logging.INFO)


def progress(total: int | None, desc: str, unit: str = "photo", **options):
    """A progress bar on stderr, shown only when stderr is a terminal (stdout may be JSON)
    and pawnet's INFO lines are shown. `options` go to tqdm, e.g. `unit_scale=True`."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not (sys.stderr.isatty() and shown()),
                leave=False, **options)
