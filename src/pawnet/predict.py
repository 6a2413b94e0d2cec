"""Labelling photos with a saved model: one `Predictor` for the CLI, Python and the server.

The predictor reads everything it needs (class names, image size, resize method, output
kind) from the bundle, never from a training config, so it cannot disagree with training.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pawnet.bundle import BundleSpec, load_bundle
from pawnet.images import IMAGE_SUFFIXES, ImageError, load_pixels


@dataclass(frozen=True)
class Prediction:
    """The result for one photo: a label and every class's probability, or an error."""

    path: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else max(self.probabilities.values())

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities}


class Predictor:
    """A loaded model plus its preprocessing.

    >>> predictor = pawnet.load("runs/train")
    >>> predictor.predict(["cat.jpg"])[0].label
    'cat'
    """

    def __init__(self, model, spec: BundleSpec, batch_size: int = 32):
        from pawnet.pipeline import batch_function  # imports TensorFlow: not at `import pawnet`

        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        self._forward = batch_function(model, "uint8")

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

    def _labelled(self, name: str, row: np.ndarray) -> Prediction:
        return Prediction(name, label=self.classes[int(np.argmax(row))],
                          probabilities={c: float(p) for c, p in zip(self.classes, row,
                                                                      strict=True)})

    def _decode(self, source: str | Path | bytes) -> np.ndarray | str:
        try:
            return load_pixels(source, self.image_size)
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
        from pawnet.pipeline import decode_ahead  # imports TensorFlow: not at `import pawnet`

        if isinstance(sources, str | Path | bytes):
            sources = [sources]
        if names is None:
            names = [s if not isinstance(s, bytes) else "<bytes>" for s in sources]
        results: list[Prediction] = []
        for start, decoded in decode_ahead(sources, self._decode, self.batch_size):
            ok = [d for d in decoded if not isinstance(d, str)]
            rows = iter(self.probabilities(np.stack(ok) if ok else np.zeros(0)))
            for name, d in zip(names[start:], decoded, strict=False):
                results.append(Prediction(str(name), error=d) if isinstance(d, str)
                               else self._labelled(str(name), next(rows)))
        return results


def load(ref: str | Path, batch_size: int = 32) -> Predictor:
    """Load a model for prediction from a run folder or a bundle folder.

    Raises:
        BundleError: the bundle is missing, damaged or from an incompatible version.
    """
    model, spec = load_bundle(ref)
    return Predictor(model, spec, batch_size=batch_size)


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
