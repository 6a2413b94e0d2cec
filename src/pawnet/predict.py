"""Labelling photos with a saved model: one `Predictor` and one `Prediction` for the CLI,
Python, evaluation and the server.

The predictor reads everything it needs (class names, image size, resize method, output
kind) from the bundle, never from a training config, so it cannot disagree with training.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pawnet.bundle import Bundle, resolve
from pawnet.data.images import IMAGE_SUFFIXES, MAX_PIXELS, load_pixels
from pawnet.errors import ConfigError, ImageError

FORMATS = ("table", "json", "csv", "kaggle")


@dataclass(frozen=True)
class Prediction:
    """The result for one photo: a label and every class's probability, or an error."""

    path: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, path: str, classes: Sequence[str], row: np.ndarray) -> Prediction:
        """The prediction for one row of class probabilities (in `classes` order)."""
        return cls(path, label=classes[int(np.argmax(row))],
                   probabilities={c: float(p) for c, p in zip(classes, row, strict=True)})

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else max(self.probabilities.values())

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities}


class Predictor:
    """A loaded model plus its preprocessing.

    Args:
        bundle: the model and its spec, from `pawnet.bundle.resolve`.
        batch_size: photos per model call. Defaults to 32.
        max_pixels: larger images are refused as possible decompression bombs. Defaults
            to 89,478,485.

    >>> predictor = pawnet.load("runs/train")
    >>> predictor.predict(["cat.jpg"])[0].label
    'cat'
    """

    def __init__(self, bundle: Bundle, batch_size: int = 32, max_pixels: int = MAX_PIXELS):
        from pawnet.data.pipeline import batch_function  # TensorFlow: not at `import pawnet`

        self.bundle = bundle
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self._forward = batch_function(bundle.model, "uint8")

    @property
    def model(self):
        return self.bundle.model

    @property
    def spec(self):
        return self.bundle.spec

    @property
    def classes(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities `(N, num_classes)` for uint8 images `(N, size, size, 3)`."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)))
        outputs = [
            self._forward(pixels[i : i + self.batch_size]).numpy()
            for i in range(0, len(pixels), self.batch_size)
        ]
        out = np.concatenate(outputs).astype(np.float64)
        if self.spec.output == "sigmoid":
            out = np.concatenate([1.0 - out, out], axis=1)
        return out

    def decode(self, source: str | Path | bytes, max_pixels: int | None = None
               ) -> np.ndarray | str:
        """The pixels the model sees for one photo, or the reason it cannot be read.

        Args:
            max_pixels: a limit for this call instead of the predictor's own.
        """
        try:
            return load_pixels(source, self.image_size, max_pixels or self.max_pixels,
                               self.spec.resize_method)
        except ImageError as exc:
            return str(exc)
        except FileNotFoundError:
            return "no such file (or no file matches this pattern)"
        except IsADirectoryError:
            return "a folder with no image files (.jpg, .png, ...)"
        except PermissionError as exc:
            return f"cannot read file ({exc.strerror})"

    def predict(
        self, sources: Sequence[str | Path | bytes] | str | Path | bytes, names=None
    ) -> list[Prediction]:
        """Label photos given as paths or bytes; unreadable ones get an error entry.

        Args:
            sources: one or more paths or raw image bytes.
            names: the `path` to report for each source. Defaults to the paths themselves,
                or "<bytes>" for raw bytes.

        Returns:
            One `Prediction` per source, in order.
        """
        from pawnet.data.pipeline import decode_ahead  # TensorFlow: not at `import pawnet`

        if isinstance(sources, str | Path | bytes):
            sources = [sources]
        if names is None:
            names = [s if not isinstance(s, bytes) else "<bytes>" for s in sources]
        results: list[Prediction] = []
        for start, decoded in decode_ahead(sources, self.decode, self.batch_size):
            ok = [d for d in decoded if not isinstance(d, str)]
            rows = iter(self.probabilities(np.stack(ok) if ok else np.zeros(0)))
            for name, d in zip(names[start:], decoded, strict=False):
                results.append(Prediction(str(name), error=d) if isinstance(d, str)
                               else Prediction.from_row(str(name), self.classes, next(rows)))
        return results


def load(model: str | Path, batch_size: int = 32, max_pixels: int = MAX_PIXELS) -> Predictor:
    """Load a model for prediction: a run folder, a bundle folder or a built-in name.

    Raises:
        BundleError: the bundle is missing, damaged or from an incompatible version.
    """
    return Predictor(resolve(model), batch_size=batch_size, max_pixels=max_pixels)


def expand_paths(args: Iterable[str | Path]) -> list[str]:
    """Files as given, folders searched recursively for images, and glob patterns expanded.

    An argument that matches nothing is kept as is, so it gets an error entry of its own.
    """
    out: list[str] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            out += found or [str(path)]  # an empty folder gets its own error entry
        elif path.exists() or not glob.has_magic(str(arg)):
            out.append(str(path))  # a missing file gets its own error entry
        else:
            matched = sorted(p for p in glob.glob(str(arg), recursive=True) if Path(p).is_file())
            out += matched or [str(arg)]  # so does a pattern that matches nothing
    return out


def _kaggle(results: Sequence[Prediction], classes: list[str]) -> list[list]:
    """`id,label` rows of a Kaggle Dogs vs. Cats submission: the probability of dog."""
    lowered = [c.lower() for c in classes]
    if "dog" not in lowered:
        raise ConfigError(f"--format kaggle needs a 'dog' class; the model has "
                          f"{', '.join(classes)}. Try: --format csv")
    dog = classes[lowered.index("dog")]
    rows = []
    for r in results:
        if r.probabilities:
            numbers = re.findall(r"\d+", Path(r.path).stem)
            if not numbers:
                raise ConfigError(f"--format kaggle needs a number in each file name, e.g. "
                                  f"1.jpg; received: {r.path}")
            rows.append([int(numbers[-1]), f"{r.probabilities[dog]:.6f}"])
    return [["id", "label"], *sorted(rows, key=lambda row: row[0])]


def _table(results: Sequence[Prediction], classes: list[str]) -> str:
    width = max([len(r.path) for r in results] + [4])
    lines = [f"{'path'.ljust(width)}  {'label':<10}" + "".join(f"{c:>10}" for c in classes)]
    for r in results:
        if r.error:
            lines.append(f"{r.path.ljust(width)}  error: {r.error}")
        else:
            lines.append(f"{r.path.ljust(width)}  {r.label:<10}"
                         + "".join(f"{r.probabilities[c]:>10.4f}" for c in classes))
    return "\n".join(lines)


def format_predictions(results: Sequence[Prediction], classes: list[str],
                       fmt: str = "table") -> str:
    """Render predictions as a table, JSON, CSV, or a Kaggle Dogs vs. Cats submission.

    Raises:
        ConfigError: kaggle asked of a model without a dog class or of unnumbered files.
    """
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    if fmt == "table":
        return _table(results, classes)
    if fmt == "csv":
        rows = [["path", "label", *classes, "error"]]
        for r in results:
            probs = ([f"{r.probabilities[c]:.6f}" for c in classes] if r.probabilities
                     else [""] * len(classes))
            rows.append([r.path, r.label or "", *probs, r.error or ""])
    elif fmt == "kaggle":
        rows = _kaggle(results, classes)
    else:
        raise ConfigError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().rstrip("\n")
