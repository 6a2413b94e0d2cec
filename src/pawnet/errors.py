"""Errors meant for people: what was wrong, what is allowed, what was received, what to try.

```
PawnetError
  ConfigError      a setting: unknown key, wrong type, out of range, bad config file
  DataError        the photos: missing folder, no usable image, unknown class, bad download
  ImageError       one file that is not a usable photo (the message is the reason)
  BundleError      a saved model that is missing, damaged or from an incompatible version
  WeightsError     pretrained weights that are not installed or cannot be read
    CheckpointError  a PyTorch checkpoint that cannot be read safely
  ClusterError     the workers of a distributed run: cannot start, differ, lost one
```

The CLI prints a `PawnetError` as one `error:` line and exits with code 2; the server answers
a client's bad input with a 4xx status and a one-line reason. Any other exception is a bug
and keeps its traceback.
"""


class PawnetError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class ConfigError(PawnetError):
    """A setting: an unknown key, a value of the wrong type or out of range, a bad config file."""


class DataError(PawnetError):
    """The photos: a missing folder, no usable images, an unknown class, a bad download."""


class ImageError(PawnetError):
    """A file that is not a usable photo; the message is the reason, for people."""


class BundleError(PawnetError):
    """A saved model bundle that is missing, damaged, or from an incompatible version."""


class WeightsError(PawnetError):
    """Pretrained weights that are not installed, or whose files are damaged."""


class CheckpointError(WeightsError):
    """A checkpoint that cannot be read safely; the message says why, in one line."""


class ClusterError(PawnetError):
    """The workers of a distributed run: one cannot start, they differ, or one was lost."""


def one_line(text: object) -> str:
    """`text` with control characters (newlines, tabs, terminal escapes) written as `\\n`,
    `\\t`, `\\x1b`, so a file name stays on its one line of a table, a log or an error."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
