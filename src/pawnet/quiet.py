"""Importing TensorFlow without its C++ start-up lines in front of pawnet's own output.

TensorFlow's native start-up lines ignore TF_CPP_MIN_LOG_LEVEL. Code that needs Keras calls
`import_quietly()` first; the CLI's `--verbose` sets `VERBOSE` to let them through.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile

VERBOSE = False


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
    """Import `module`, holding back what it writes to stderr unless `VERBOSE`."""
    if module in sys.modules:
        return
    with contextlib.nullcontext() if VERBOSE else native_stderr_held():
        importlib.import_module(module)
