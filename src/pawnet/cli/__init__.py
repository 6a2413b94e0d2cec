"""The `pawnet` command: one verb per job, the same words as the Python API and config keys.

`pawnet train` has one flag per `Config` field and `pawnet serve` one per `ServeSettings`
field, generated from their declarations, so a flag, a YAML key and a Python keyword can
never drift apart. The package is Typer only: it parses, calls the library, prints.
`app.py` holds the command group; `data.py`, `train.py`, `use.py`, `watch.py`, `tools.py`
and `studio.py` its commands.
"""

from __future__ import annotations

import contextlib
import sys

from pawnet.cli.app import app

# isort: off
# each registers its commands, in the order `pawnet --help` lists them
from pawnet.cli import train, use, watch, tools, data, studio  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
        code: int | str | None = 0
    except SystemExit as exc:  # Typer ends every command this way
        code = exc.code
    _exit(code)


def _exit(code: int | str | None) -> None:
    """Exit with `code`; once TensorFlow is loaded, without tearing the interpreter down
    (TensorFlow's teardown adds about a second to every command, docs/decisions.md):
    exit handlers run and output is flushed first, as at a normal exit."""
    import atexit
    import os
    import threading

    working = [t for t in threading.enumerate() if t.is_alive() and not t.daemon
               and t is not threading.main_thread()]
    if "tensorflow" not in sys.modules or working:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush
            stream.flush()
    os._exit(code or 0)
