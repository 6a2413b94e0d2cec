"""Importing TensorFlow without its C++ start-up lines in front of pawnet's own output.

TensorFlow's native start-up lines ignore TF_CPP_MIN_LOG_LEVEL. Code that needs Keras calls
`import_quietly()` first; within `native_logs_shown()` (the CLI's `--verbose`) they pass.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar

_SHOWN: ContextVar[bool] = ContextVar("pawnet_native_logs_shown", default=False)


@contextlib.contextmanager
def native_logs_shown(shown: bool = True) -> Iterator[None]:
    """Within the block (in this thread or task), TensorFlow's native lines pass."""
    token = _SHOWN.set(shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def native_logs_are_shown() -> bool:
    """Whether TensorFlow's native lines pass now: the CLI's `--verbose`."""
    return _SHOWN.get()


def held():
    """`native_stderr_held()`, unless the native lines are shown (`native_logs_shown`)."""
    return contextlib.nullcontext() if _SHOWN.get() else native_stderr_held()


@contextlib.contextmanager
def native_stderr_held():
    """Hold back what is written to file descriptor 2. When the block fails, what was held
    back is shown after all."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            held.seek(0)
            os.write(saved, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_quietly(module: str = "tensorflow") -> None:
    """Import `module`, holding back what it writes to stderr (see `held`)."""
    if module in sys.modules:
        return
    with held():
        importlib.import_module(module)
