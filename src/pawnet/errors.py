"""Errors meant for people: what was wrong, what is allowed, what was received, what to try.

The CLI prints a `PawnetError` as one line and exits with code 2; the server maps it to a 4xx
status. Any other exception is a bug and keeps its traceback.
"""


class PawnetError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class DataError(PawnetError):
    """The photos: a missing folder, no usable images, an unknown class, a bad download."""


class ConfigError(PawnetError):
    """A setting: an unknown key, a value of the wrong type or out of range, a bad config file."""


class BundleError(PawnetError):
    """A saved model bundle that is missing, damaged, or from an incompatible version."""
