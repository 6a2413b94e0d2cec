"""`pawnet export`: one model file another program can run, a JSON that says how to feed it,
and a check on real photos that the file answers what the bundle answers.

```
OUT/
  model.onnx | model.tflite | saved_model/   the model: raw 0-255 RGB float32 NHWC in
  pawnet.json                                classes, input size, preprocessing, output kind,
                                             source bundle fingerprint, the check's figures
```
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pawnet import __version__, logs
from pawnet.data.images import MAX_PIXELS, load_pixels
from pawnet.data.splits import read_manifest
from pawnet.errors import BundleError, ConfigError, DataError, ImageError, one_line
from pawnet.inference.bundle import Bundle, BundleSpec, resolve, split_outputs
from pawnet.inference.convert import MODEL_FILES, check_format, write_model
from pawnet.inference.runtimes import KerasRuntime, open_file
from pawnet.run_folder import RunFolder
from pawnet.storage import Output, atomic_path, check_output_folder

log = logging.getLogger(__name__)

CHECK_PHOTOS = 200  # most photos the exported file is checked on
CALIBRATION_PHOTOS = (100, 300)  # int8: fewest and most training photos to calibrate on
INT8_MAX_DROP = 0.01  # int8 accuracy may fall this far below fp32 (1 point)
EXPORT_OUTPUT = Output("export", r"model\.onnx|model\.tflite|saved_model|pawnet\.json",
                       r"pawnet\.json")


def _photos_to_check(bundle: Bundle, model: str | Path, photos: str | Path | None):
    """(paths, labels, description) of the photos to check the export on: `photos`, or
    the run's test split (or validation split)."""
    from pawnet.reporting.evaluate import select_photos

    if photos is None and bundle.run_dir is None:
        raise DataError(f"{model} has no training run to take check photos from. "
                        "Try: pawnet export MODEL --photos FOLDER")
    for split in ("test", "val"):
        try:
            return select_photos(model, bundle.run_dir, photos, split)
        except DataError:
            if split == "val":
                raise
    raise AssertionError("unreachable")


def _int8_calibration_photos(bundle: Bundle):
    """(a function yielding them, how many): the run's own training photos that int8
    quantization measures activation ranges on, decoded as at predict time."""
    if bundle.run_dir is None:
        raise ConfigError("--int8 calibrates on the training run's own photos, and this "
                          "model has no run. Try: pawnet export RUN_FOLDER --int8")
    train = [p.path for p in read_manifest(RunFolder(bundle.run_dir).manifest)
             if p.split == "train" and Path(p.path).is_file()]
    fewest, most = CALIBRATION_PHOTOS
    if len(train) < fewest:
        raise DataError(f"--int8 needs at least {fewest} training photos to calibrate on; "
                        f"the run has {len(train)}. Try: export without --int8")
    chosen = train[:: max(1, len(train) // most)][:most]
    size = bundle.spec.image_size
    return (lambda: (load_pixels(p, size) for p in chosen)), len(chosen)


def _saved_model_runtime(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # its variables live as long as it does
    return lambda images: loaded.serve(tf.constant(images, tf.float32)).numpy()


def _run_export(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    runtime = _saved_model_runtime(path) if fmt == "saved_model" else open_file(path, fmt)
    return np.concatenate([runtime(images[i : i + 32]) for i in range(0, len(images), 32)])


def _pixels(path: str, size: int) -> np.ndarray | None:
    try:
        return load_pixels(path, size, MAX_PIXELS)
    except (ImageError, OSError):
        return None


def _labels(outputs: np.ndarray, spec: BundleSpec) -> np.ndarray:
    return split_outputs(outputs, spec)[0].argmax(1)


def _compare(bundle: Bundle, fmt: str, path: Path, paths: list[str], labels: list[str],
             int8: bool) -> dict[str, Any]:
    """Run the exported file and the bundle on the check photos; refuse a disagreeing
    fp32 export, or an int8 one that loses more than `INT8_MAX_DROP` accuracy."""
    size, classes = bundle.spec.image_size, bundle.spec.class_names
    chosen = list(zip(paths, labels, strict=True))
    kept = [(pixels, label) for p, label in (chosen if int8 else chosen[:CHECK_PHOTOS])
            if label in classes and (pixels := _pixels(p, size)) is not None]
    if not kept:
        raise DataError(f"none of the check photos could be read, or none has one of the "
                        f"model's classes ({', '.join(classes)})")
    images = np.stack([k[0] for k in kept])
    truth = np.array([classes.index(k[1]) for k in kept])
    want = np.concatenate([KerasRuntime(bundle.model)(images[i : i + 32])
                           for i in range(0, len(images), 32)])
    got = _run_export(fmt, path, images)
    agree = float((_labels(got, bundle.spec) == _labels(want, bundle.spec)).mean())
    check = {"photos": len(kept), "max_abs_diff": float(np.abs(got - want).max()),
             "label_agreement": agree,
             "accuracy": float((_labels(got, bundle.spec) == truth).mean()),
             "bundle_accuracy": float((_labels(want, bundle.spec) == truth).mean())}
    if not int8 and agree < 1.0:
        raise BundleError(f"the {fmt} export disagrees with the bundle on "
                          f"{round((1 - agree) * len(kept))} of {len(kept)} photos "
                          f"(max difference {check['max_abs_diff']:.2g}); nothing was written")
    drop = check["bundle_accuracy"] - check["accuracy"]
    if int8 and drop > INT8_MAX_DROP:
        raise BundleError(f"int8 accuracy {check['accuracy']:.4f} is {100 * drop:.1f} points "
                          f"below fp32 {check['bundle_accuracy']:.4f} on {len(kept)} photos; "
                          "nothing was written. Try: export without --int8")
    return check


def _describe(bundle: Bundle, fmt: str, int8: bool, calibrated: int) -> dict[str, Any]:
    spec = bundle.spec
    return {
        "format": fmt, "file": MODEL_FILES[fmt],
        "quantization": "int8" if int8 else "none",
        "class_names": list(spec.class_names), "image_size": spec.image_size,
        "output": spec.output,  # sigmoid: one column, P(class_names[1])
        "temperature": spec.temperature,  # calibrated probabilities: softmax(log(p) / T)
        # set: the model's last output column is an OOD score; above it, the label is neither
        "ood_threshold": spec.ood_threshold,
        "min_confidence": spec.min_confidence,  # top probability below it: the label is unsure
        "min_side": spec.min_side,  # a photo's shorter side below it: unsure, too small
        "input": {"dtype": "float32", "layout": "NHWC", "range": list(spec.input_range),
                  "channels": spec.channels},
        "preprocessing": {
            "library": "Pillow", "exif_transpose": True, "alpha": "composite on white",
            "jpeg_draft": True,  # Image.draft(mode, (size, size)) before loading a JPEG
            "resize": spec.resize_method, "aspect": spec.aspect,
        },
        "source": {"model_name": spec.model_name, "bundle": str(bundle.path or spec.model_name),
                   "bundle_fingerprint": bundle.fingerprint, "pawnet_version": __version__},
        "calibration_photos": calibrated,
    }


def default_out(bundle: Bundle, fmt: str, int8: bool) -> Path:
    name = fmt + ("-int8" if int8 else "")
    if bundle.path is not None:
        folder = RunFolder(bundle.run_dir or bundle.path)
        return folder.export(name)
    return Path("exports") / bundle.spec.model_name / name


def export(model: str | Path, fmt: str = "onnx", *, out: str | Path | None = None,
           int8: bool = False, photos: str | Path | None = None,
           verbose: bool = True) -> dict[str, Any]:
    """Export a model to `fmt` ("saved_model", "litert" or "onnx") and check it on photos.

    Args:
        model: a run folder, a bundle folder or a built-in name.
        out: folder to write. Defaults to `RUN/export/FORMAT`. An existing folder is
            replaced only when it is an earlier export (never a folder of the user's).
        int8: LiteRT only: integer weights and activations, calibrated on the run's own
            training photos.
        photos: photos to check the export on. Defaults to the run's test split (or val).
        verbose: say what is exported and checked on; warnings always.

    Returns:
        What `pawnet.json` says, with `out` and the check's figures under `check`.

    Raises:
        ConfigError: unknown format, int8 on a format without it, a missing converter,
            or `out` holds something that is not an earlier export.
        BundleError: the export disagrees with the bundle (nothing is left behind).
    """
    check_format(fmt, int8)
    with logs.verbosity(verbose):
        bundle = resolve(model)
        out = check_output_folder(out or default_out(bundle, fmt, int8), EXPORT_OUTPUT)
        paths, labels, source = _photos_to_check(bundle, model, photos)
        int8_photos, calibrated = _int8_calibration_photos(bundle) if int8 else (None, 0)
        info = _describe(bundle, fmt, int8, calibrated)
        log.info(f"Exporting {bundle.spec.model_name} to {fmt}{' int8' if int8 else ''}; "
                 f"checking on {one_line(source)}")
        with atomic_path(out, EXPORT_OUTPUT) as tmp:
            tmp.mkdir(parents=True)
            write_model(bundle.model, fmt, tmp / MODEL_FILES[fmt], int8_photos)
            info["check"] = {"source": source, **_compare(bundle, fmt, tmp / MODEL_FILES[fmt],
                                                          paths, labels, int8)}
            (tmp / "pawnet.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "out": str(out)}


def format_export(report: dict[str, Any]) -> str:
    """The export's result for a terminal."""
    check = report["check"]
    lines = [f"Wrote {one_line(Path(report['out']) / report['file'])} ({report['format']}"
             f"{', int8' if report['quantization'] == 'int8' else ''}) and pawnet.json",
             f"Checked on {check['photos']} photos of {one_line(check['source'])}: labels agree on "
             f"{100 * check['label_agreement']:.1f}%, max probability difference "
             f"{check['max_abs_diff']:.2g}",
             f"Accuracy: export {check['accuracy']:.4f}, bundle {check['bundle_accuracy']:.4f}"]
    return "\n".join(lines)
