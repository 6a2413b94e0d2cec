"""Labelling photos with a saved model: one `Predictor` and one `Prediction` for the CLI,
Python, evaluation and the server.

The predictor reads everything it needs (class names, image size, resize method, output
kind) from the bundle, never from a training config, so it cannot disagree with training.
"""

from __future__ import annotations

import contextlib
import copy
import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pawnet.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    DecodeBudget,
    decode_ahead,
    load_photo,
    load_pixels,
)
from pawnet.data.shards import in_shard
from pawnet.data.splits import read_manifest
from pawnet.errors import ImageError
from pawnet.inference.bundle import Bundle, check_confidence, check_io, resolve, split_outputs
from pawnet.inference.runtimes import choose, on_every_core, synthetic_images
from pawnet.run_folder import RunFolder
from pawnet.trust.calibration import calibrate
from pawnet.trust.verdict import verdict


@dataclass(frozen=True)
class Prediction:
    """The result for one photo, or an error.

    `label` is the most probable class, or `unsure` / `neither` with the `reason` (too
    small, unlike the training photos, no class likely enough; see `pawnet.trust.verdict`).
    """

    path: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    ood_score: float | None = None
    reason: str | None = None

    @classmethod
    def from_row(cls, path: str, classes: Sequence[str], row: np.ndarray,
                 ood_score: float | None = None, *, size: tuple[int, int] | None = None,
                 min_side: int = 0, min_confidence: float = 0.0,
                 ood_threshold: float | None = None) -> Prediction:
        """The prediction for one row of class probabilities (in `classes` order), of a
        photo of `size` (width, height) when known."""
        score = None if ood_score is None else float(ood_score)
        label, reason = verdict(classes, row, size=size, min_side=min_side, ood_score=score,
                                ood_threshold=ood_threshold, min_confidence=min_confidence)
        return cls(path, label=label, ood_score=score, reason=reason,
                   probabilities={c: float(p) for c, p in zip(classes, row, strict=True)})

    @property
    def top_class(self) -> str | None:
        """The most probable class, whatever the label says."""
        return None if self.probabilities is None else max(self.probabilities,
                                                            key=self.probabilities.get)

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else max(self.probabilities.values())

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "label": self.label, "reason": self.reason,
               "probabilities": self.probabilities}
        return out if self.ood_score is None else {**out, "ood_score": self.ood_score}


class Predictor:
    """A loaded model plus its preprocessing; `pawnet.load` builds one.

    Args:
        bundle: the model and its spec, from `pawnet.inference.bundle.resolve`.
        batch_size: photos per model call. Defaults to 32.
        max_pixels: larger images are refused as possible decompression bombs. Defaults
            to 89,478,485.
        runtime: "auto" (the fastest installed runtime that agrees with Keras), "keras",
            "onnx" or "litert". Defaults to "auto".
        tta: average each photo's probabilities with its mirror image's (test-time
            augmentation; twice the model time). Defaults to False.
        min_confidence: a photo whose top probability is below this is labelled `unsure`
            (0: never). Defaults to None: the bundle's, chosen on validation photos.

    >>> predictor = pawnet.load("runs/train")
    >>> predictor.predict(["cat.jpg"])[0].label
    'cat'
    """

    def __init__(self, bundle: Bundle, batch_size: int = 32, max_pixels: int = MAX_PIXELS,
                 runtime: str = "auto", tta: bool = False, min_confidence: float | None = None):
        self.bundle, self.decodes = bundle, DecodeBudget.for_this_machine()
        self._settle(batch_size, max_pixels, tta, min_confidence)
        self.runtime = choose(runtime, bundle.fingerprint, lambda: bundle.model,
                              lambda: probe_images(bundle))
        units, side = _io_shape(self.runtime)
        if units is not None:
            check_io(bundle.path or bundle.spec.model_name, bundle.spec, units, side)

    def _settle(self, batch_size: int, max_pixels: int, tta: bool,
                min_confidence: float | None) -> None:
        """The settings but the runtime (see the class); `min_confidence` None: the bundle's."""
        self.batch_size, self.max_pixels, self.tta = batch_size, max_pixels, tta
        self.min_confidence = (self.spec.min_confidence if min_confidence is None
                               else check_confidence(min_confidence))

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

    def probabilities(self, pixels: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """Class probabilities `(N, num_classes)` for uint8 images `(N, size, size, 3)`.

        Args:
            tta: average with the mirror images; None: the predictor's `tta`.
        """
        return self.rows(pixels, tta)[:, : len(self.classes)]

    def rows(self, pixels: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """Class probabilities, then the OOD score when the model has one, per image:
        `(N, num_classes [+ 1])`; `prediction` turns a row into a `Prediction`."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes) + (self.spec.ood_threshold is not None)))
        tta = self.tta if tta is None else tta
        return np.concatenate([self._run(self.runtime, pixels[i : i + self.batch_size], tta)
                               for i in range(0, len(pixels), self.batch_size)])

    def _run(self, runtime, pixels: np.ndarray, tta: bool) -> np.ndarray:
        out = runtime(pixels)
        if tta:
            out = (out + runtime(np.ascontiguousarray(pixels[:, :, ::-1]))) / 2
        probabilities, scores = split_outputs(out, self.spec)
        probabilities = calibrate(probabilities, self.spec.temperature)
        return probabilities if scores is None else np.column_stack([probabilities, scores])

    def prediction(self, name: str, row: np.ndarray, size: tuple[int, int] | None = None
                   ) -> Prediction:
        """The `Prediction` for one of `rows`' rows, of a photo of `size` (width, height;
        None: not known, never too small)."""
        n = len(self.classes)
        return Prediction.from_row(name, self.classes, row[:n],
                                   float(row[n]) if len(row) > n else None, size=size,
                                   min_side=self.spec.min_side,
                                   min_confidence=self.min_confidence,
                                   ood_threshold=self.spec.ood_threshold)

    def decode(self, source: str | Path | bytes, max_pixels: int | None = None) -> np.ndarray:
        """The pixels the model sees for one photo; `max_pixels`: a limit for this call
        instead of the predictor's own.

        Raises:
            ImageError: the photo cannot be read; the message is the reason.
        """
        return self.decode_sized(source, max_pixels)[0]

    def decode_sized(self, source: str | Path | bytes, max_pixels: int | None = None
                     ) -> tuple[np.ndarray, tuple[int, int]]:
        """`decode`, with the photo's own (width, height): (pixels, size); raises the same."""
        try:
            return load_photo(source, self.image_size, max_pixels or self.max_pixels,
                              self.spec.resize_method, budget=self.decodes)
        except FileNotFoundError:
            raise ImageError("no such file (or no file matches this pattern)") from None
        except IsADirectoryError:
            raise ImageError("a folder with no image files (.jpg, .png, ...)") from None
        except PermissionError as exc:
            raise ImageError(f"cannot read file ({exc.strerror})") from None

    def decode_or_error(self, source: str | Path | bytes
                        ) -> tuple[np.ndarray, tuple[int, int]] | ImageError:
        """`decode_sized`, or the `ImageError` saying why not: for batches, where one
        unreadable photo gets an error entry of its own (`predict`, the server)."""
        try:
            return self.decode_sized(source)
        except ImageError as exc:
            return exc

    def predict(
        self, sources: Sequence[str | Path | bytes] | str | Path | bytes, names=None,
        shard: str | tuple[int, int] | None = None,
    ) -> list[Prediction]:
        """Label photos given as paths or bytes; unreadable ones get an error entry.

        Args:
            sources: one or more paths or raw image bytes.
            names: the `path` to report for each source. Defaults to the paths themselves,
                or "<bytes>" for raw bytes.
            shard: "I/N" or (I, N): label only the sources of share I of N, chosen by
                content (see `in_shard`), so N processes label all of them, each once.

        Returns:
            One `Prediction` per source (of the shard), in order.
        """
        if isinstance(sources, str | Path | bytes):
            sources = [sources]
        if names is None:
            names = [s if not isinstance(s, bytes) else "<bytes>" for s in sources]
        if shard is not None:
            keep = in_shard(sources, shard)
            sources, names = [sources[i] for i in keep], [names[i] for i in keep]
        single = getattr(self.runtime, "single_threaded", None)
        if single is not None:
            return self._predict_each(single(), sources, names)
        results: list[Prediction] = []
        for start, decoded in decode_ahead(sources, self.decode_or_error, self.batch_size):
            results += self._results(names[start : start + len(decoded)], decoded, self.rows)
        return results

    def _predict_each(self, runtime, sources: Sequence, names: Sequence) -> list[Prediction]:
        """A few photos at a time on each core, decoding and running the model in the same
        thread: faster than batches on a runtime whose calls can overlap
        (docs/decisions.md)."""
        def label(chunk: range) -> list[Prediction]:
            return self._results([names[i] for i in chunk],
                                 [self.decode_or_error(sources[i]) for i in chunk],
                                 lambda pixels: self._run(runtime, pixels, self.tta))

        parts = on_every_core(label, len(sources), runtime.photos_per_call)
        return [p for part in parts for p in part]

    def _results(self, names: Sequence, decoded: list, rows) -> list[Prediction]:
        """One `Prediction` per decoded photo ((pixels, size), or the `ImageError` saying why
        it could not be read), with `rows` run once on all the readable ones."""
        ok = [d for d in decoded if not isinstance(d, ImageError)]
        found = iter(rows(np.stack([pixels for pixels, _ in ok])) if ok else ())
        return [Prediction(str(name), error=str(d)) if isinstance(d, ImageError)
                else self.prediction(str(name), next(found), d[1])
                for name, d in zip(names, decoded, strict=True)]


def load(model: str | Path | Bundle | Predictor, batch_size: int = 32,
         max_pixels: int = MAX_PIXELS, runtime: str = "auto", tta: bool = False,
         min_confidence: float | None = None) -> Predictor:
    """Load a model for prediction: a run folder, a bundle folder, a built-in name or a
    `Bundle` already resolved, on `runtime`, with or without `tta`, with the bundle's or a
    given `min_confidence` (see `Predictor`). The one way pawnet builds a predictor: the
    CLI, Python, the server.

    A `Predictor` given as `model` is left as it is: the answer is a copy of it (of its own
    class) with these settings, which keeps its runtime when `runtime` is "auto" and its
    minimum confidence when `min_confidence` is None.

    Raises:
        BundleError: the bundle is missing, damaged or from an incompatible version.
        ConfigError: an unknown runtime, one not installed, or `min_confidence` not in 0..1.
    """
    if not isinstance(model, Predictor):
        bundle = model if isinstance(model, Bundle) else resolve(model)
        return Predictor(bundle, batch_size=batch_size, max_pixels=max_pixels,
                         runtime=runtime, tta=tta, min_confidence=min_confidence)
    kept = model.min_confidence if min_confidence is None else min_confidence
    if runtime not in ("auto", model.runtime.name):
        return Predictor(model.bundle, batch_size=batch_size, max_pixels=max_pixels,
                         runtime=runtime, tta=tta, min_confidence=kept)
    copied = copy.copy(model)  # the runtime is chosen once; the caller's keeps its settings
    copied._settle(batch_size, max_pixels, tta, kept)
    return copied


PROBE_PHOTOS = 16  # validation photos a converted model is checked on against Keras


def probe_images(bundle: Bundle) -> np.ndarray:
    """Images to check a converted model against Keras on: the run's validation photos
    when there is a run (those still there and readable), else fixed synthetic images
    (gradients and noise)."""
    size = bundle.spec.image_size
    if bundle.run_dir is not None:
        photos = [p for p in read_manifest(RunFolder(bundle.run_dir).manifest) if p.split == "val"]
        decoded = []
        for photo in photos[:PROBE_PHOTOS]:
            with contextlib.suppress(ImageError, OSError):  # gone or changed since training
                decoded.append(load_pixels(photo.path, size))
        if decoded:
            return np.stack(decoded)
    return synthetic_images(size)


def _io_shape(runtime) -> tuple[int | None, tuple]:
    """(output units, input side) of a converted file, to check against bundle.json."""
    shape = getattr(runtime, "input_shape", None)
    if shape is None:
        return None, ()
    return int(runtime.units), tuple(int(v) for v in shape[1:3])


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
