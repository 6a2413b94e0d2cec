"""The `pawnet` command: one verb per job, the same words as the Python API and config keys."""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pawnet.errors import PawnetError

app = typer.Typer(
    help="pawnet: turn a folder of labelled photos into an image classifier, and use it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at a folder of photos before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def user_errors(func):
    """Print a PawnetError as one line on stderr and exit with code 2; Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PawnetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


Photos = Annotated[Path, typer.Argument(help="Folder of photos (any supported layout).")]


@data_app.command("check")
@user_errors
def data_check(
    photos: Photos,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    max_pixels: Annotated[int | None, typer.Option(help="Skip larger images (bombs).")] = None,
) -> None:
    """What is there, and what is wrong with it: layout, classes, bad files, duplicates."""
    from pawnet.data import scan
    from pawnet.images import MAX_PIXELS

    photoset = scan(photos, max_pixels=max_pixels or MAX_PIXELS)
    if as_json:
        typer.echo(json.dumps(photoset.to_json(), indent=2))
        return
    typer.echo(photoset.summary())
    typer.echo(f"Layout: {photoset.layout}")
    for split in photoset.splits() or [None]:
        counts = photoset.counts(split)
        label = f"{split}: " if split else ""
        typer.echo(f"  {label}" + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if photoset.converted:
        typer.echo("Converted to RGB when read: "
                   + ", ".join(f"{n} {kind}" for kind, n in photoset.converted.items()))
    if photoset.skipped:
        typer.echo(f"Skipped {len(photoset.skipped)} files (left untouched):")
        for s in photoset.skipped:
            typer.echo(f"  {s.path}: {s.reason}")
    if photoset.duplicates:
        typer.echo(f"{len(photoset.duplicates)} groups of identical files (one copy is used):")
        for group in photoset.duplicates:
            typer.echo("  " + "  =  ".join(group))


@data_app.command("show")
@user_errors
def data_show(
    photos: Photos,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("grid.png"),
    augment: Annotated[str | None, typer.Option(help="Augmentations, e.g. flip,zoom.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the images in px.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the batch and augmentation.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
) -> None:
    """Draw an 8x8 grid of one (optionally augmented) training batch, labelled."""
    from pawnet.preview import show_batch

    path = show_batch(photos, out, config=config, augment=augment, image_size=image_size,
                      seed=seed)
    typer.echo(f"Wrote {path}")


@app.command("models")
def models() -> None:
    """List the registered architectures, one line each."""
    from pawnet.builtin import BUILTIN_MODELS
    from pawnet.models import list_models

    specs = list_models()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        typer.echo(f"{spec.name.ljust(width)}  {spec.image_size}px  {spec.description}")
    for name, factory in BUILTIN_MODELS.items():
        summary = (factory.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name.ljust(width)}  built-in, no training: {summary}")


@app.command("train")
@user_errors
def train(
    photos: Annotated[Path | None, typer.Argument(help="Folder of photos.")] = None,
    model: Annotated[str | None, typer.Option(help="Architecture (see `pawnet models`).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the input in px.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Photos per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for split, shuffle, weights.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share.")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Test share.")] = None,
    augment: Annotated[str | None, typer.Option(help="e.g. flip,zoom,shear,rotate or none.")]
    = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/train).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder.")] = None,
) -> None:
    """Train a model; the run folder gets the bundle, curves, history and split manifest."""
    from pawnet.train import train as run_training

    if photos is None and resume is None:
        raise typer.BadParameter("give PHOTOS, or --resume RUN_DIR", param_hint="PHOTOS")
    settings = {
        "model": model, "epochs": epochs, "image_size": image_size, "batch_size": batch_size,
        "lr": lr, "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
        "augment": augment, "patience": patience,
        "out": str(out) if out else None, "resume": str(resume) if resume else None,
    }
    if resume is not None and photos is not None:
        settings["data"] = str(photos)
    try:
        run_dir = run_training(photos if resume is None else None, config=config, **settings)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; finished epochs are saved. Continue with: "
                   "pawnet train --resume RUN_DIR (the run folder printed above)", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"Run folder: {run_dir}\nNext: pawnet evaluate {run_dir}  |  "
               f"pawnet predict {run_dir} PHOTO.jpg")


@app.command("evaluate")
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or bundle folder.")],
    photos: Annotated[Path | None, typer.Argument(help="Photos (default: run's split).")]
    = None,
    split: Annotated[str, typer.Option(help="Split to use: test, val or train.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Report folder (default RUN_DIR/eval).")]
    = None,
) -> None:
    """Per-class metrics, confusion matrix and misclassified photos on held-out photos."""
    from pawnet.evaluate import confusion_text
    from pawnet.evaluate import evaluate as run_evaluation

    report = run_evaluation(run_dir, photos, split=split, out=out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"Evaluated {report['n']} photos from {report['source']}")
    typer.echo(f"accuracy {report['accuracy']:.4f}"
               + (f"  ROC-AUC {report['roc_auc']:.4f}" if report.get("roc_auc") else "")
               + (f"  log loss {report['log_loss']:.4f}" if "log_loss" in report else "")
               + f"  ECE {report['expected_calibration_error']:.4f}")
    typer.echo(f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, m in report["per_class"].items():
        typer.echo(f"{name:<12}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
                   f"{m['support']:>10}")
    typer.echo(confusion_text(report))
    if report["failed"]:
        typer.echo(f"{len(report['failed'])} photos could not be read (listed in report.json)")
    typer.echo(f"Report: {report['out']}/report.md")


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    kaggle = "kaggle"


def _kaggle_id(path: str) -> int | None:
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def format_predictions(results, classes: list[str], fmt: Format) -> str:
    """Render predictions as a table, JSON, CSV, or a Kaggle Dogs vs Cats submission."""
    if fmt is Format.json:
        return json.dumps([r.to_dict() for r in results], indent=2)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt is Format.csv:
        writer.writerow(["path", "label", *classes, "error"])
        for r in results:
            probs = ([f"{r.probabilities[c]:.6f}" for c in classes] if r.probabilities
                     else [""] * len(classes))
            writer.writerow([r.path, r.label or "", *probs, r.error or ""])
        return buffer.getvalue().rstrip("\n")
    if fmt is Format.kaggle:
        lowered = [c.lower() for c in classes]
        if "dog" not in lowered:
            raise PawnetError(f"--format kaggle needs a 'dog' class; the model has "
                              f"{', '.join(classes)}. Try: --format csv")
        dog = classes[lowered.index("dog")]
        rows = [(_kaggle_id(r.path), r) for r in results if r.probabilities]
        missing = [r.path for i, r in rows if i is None]
        if missing:
            raise PawnetError(f"--format kaggle needs a number in each file name, e.g. 1.jpg; "
                              f"received: {missing[0]}")
        writer.writerow(["id", "label"])
        for i, r in sorted(rows, key=lambda t: t[0]):
            writer.writerow([i, f"{r.probabilities[dog]:.6f}"])
        return buffer.getvalue().rstrip("\n")
    width = max([len(r.path) for r in results] + [4])
    lines = [f"{'path'.ljust(width)}  {'label':<10}" + "".join(f"{c:>10}" for c in classes)]
    for r in results:
        if r.error:
            lines.append(f"{r.path.ljust(width)}  error: {r.error}")
        else:
            lines.append(f"{r.path.ljust(width)}  {r.label:<10}"
                         + "".join(f"{r.probabilities[c]:>10.4f}" for c in classes))
    return "\n".join(lines)


@app.command("predict")
@user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or bundle folder.")],
    paths: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Label photos: a label and every class's probability per photo."""
    from pawnet.predict import expand_paths, load

    predictor = load(run_dir)
    results = predictor.predict(expand_paths(paths))
    typer.echo(format_predictions(results, predictor.classes, fmt))
    failed = [r for r in results if r.error]
    if failed and fmt in (Format.kaggle,):
        for r in failed:
            typer.echo(f"skipped {r.path}: {r.error}", err=True)
    if len(failed) == len(results):
        typer.echo("error: no photo could be predicted", err=True)
        raise typer.Exit(1)


@app.command("serve")
@user_errors
def serve(
    model: Annotated[str, typer.Argument(help="Run folder, bundle folder or built-in name.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most images per model call (1: off).",
                                           min=1)] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill.",
                                               min=0)] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB.",
                                                 min=0.001)] = 10.0,
    api_key_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the API key that /v1/* calls must send.")] = None,
) -> None:
    """Serve a model: REST API, web page at /, /healthz, /metrics, /docs."""
    import os

    from pawnet.serve import run

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key.strip():
            raise PawnetError(f"--api-key-env names {api_key_env}, but that environment "
                              f"variable is empty or not set. Try: export {api_key_env}=...")
    run(model, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
        max_upload_mb=max_upload_mb, api_key=api_key)


@app.command("bench")
@user_errors
def bench(
    photos: Photos,
    model: Annotated[str | None, typer.Option(help="Architecture (see `pawnet models`).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the input in px.", min=8)]
    = None,
    batch_size: Annotated[int | None, typer.Option(help="Photos per step.", min=1)] = None,
    augment: Annotated[str | None, typer.Option(help="e.g. flip,zoom,shear or none.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only this many photos.", min=2)] = None,
    epochs: Annotated[int, typer.Option(help="End-to-end training epochs.", min=2)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Where the time goes: input pipeline, compute limit, end to end, efficiency, memory."""
    from pawnet.bench import bench as run_bench
    from pawnet.bench import format_bench

    result = run_bench(photos, model=model, image_size=image_size, batch_size=batch_size,
                       augment=augment, limit=limit, epochs=epochs)
    typer.echo(json.dumps(result, indent=2) if as_json else format_bench(result))


@app.command("demo")
@user_errors
def demo(
    data: Annotated[Path | None, typer.Option(help="Photos to use instead of the search.")]
    = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
) -> None:
    """Find cats-vs-dogs photos, train the default model, evaluate it and predict a few."""
    from pawnet.demo import run_demo

    run_demo(data, epochs=epochs)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
