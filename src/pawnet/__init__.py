"""pawnet: from a folder of labelled photos to a trustworthy image classifier.

>>> import pawnet
>>> run = pawnet.train("photos/", epochs=5)
>>> pawnet.evaluate(run).accuracy
>>> pawnet.load(run).predict(["new.jpg"])[0].label

Everything in `__all__` is the public API; the rest is internal. Names load on first use,
so `import pawnet` (and `pawnet --help`) does not pay for TensorFlow.
"""

import importlib
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter quiet
# TensorFlow reads this when it is imported, and leaves its oneDNN kernels off on CPUs
# without AVX-512, where they are faster (docs/decisions.md).
if "TF_ENABLE_ONEDNN_OPTS" not in os.environ and "tensorflow" in sys.modules:
    warnings.warn(
        "TensorFlow was imported before pawnet, so its oneDNN kernels may be off and "
        "training and prediction run up to 1.5x slower on CPUs without AVX-512. "
        "Fix: import pawnet before keras or tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1",
        stacklevel=2,
    )
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"  # the one place; pyproject.toml reads it

_PUBLIC = {  # name -> module that defines it
    "BundleError": "pawnet.errors",
    "Config": "pawnet.config",
    "ConfigError": "pawnet.errors",
    "DataError": "pawnet.errors",
    "ImageError": "pawnet.errors",
    "PawnetError": "pawnet.errors",
    "Prediction": "pawnet.inference.predictor",
    "Predictor": "pawnet.inference.predictor",
    "Report": "pawnet.reporting.report",
    "ServeSettings": "pawnet.serve.settings",
    "WeightsError": "pawnet.errors",
    "compare": "pawnet.reporting.compare",
    "create_app": "pawnet.serve.app",
    "evaluate": "pawnet.reporting.evaluate",
    "export": "pawnet.inference.export",
    "list_models": "pawnet.models.registry",
    "load": "pawnet.inference.predictor",
    "resolve_config": "pawnet.config",
    "scan": "pawnet.data.scan",
    "train": "pawnet.training",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pawnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
