"""The `pawnet` command: one verb per job, the same words as the Python API and config keys.

`pawnet train` has one flag per `Config` field and `pawnet serve` one per `ServeSettings`
field, generated from their declarations, so a flag, a YAML key and a Python keyword can
never drift apart. This module is Typer only: it parses, calls the library, prints.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pawnet import logs, quiet
from pawnet.cli.options import OneLineErrors, command, with_fields
from pawnet.config import Config
from pawnet.errors import one_line
from pawnet.serve.settings import ServeSettings

app = typer.Typer(
    cls=OneLineErrors,
    help="pawnet: turn a folder of labelled photos into an image classifier, and use it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at a folder of photos before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show TensorFlow's "
                                          "own log lines.")] = False,
) -> None:
    logs.show_on_console()
    ctx.with_resource(quiet.native_logs_shown(verbose))


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Photos = Annotated[Path, typer.Argument(metavar="PHOTOS",
                                        help="Folder of photos (any supported layout).")]
Model = Annotated[str, typer.Argument(
    metavar="MODEL", help="Trained model: a run folder, its bundle/ folder, or a built-in name.")]


@command(data_app, "check", tensorflow=False)
def data_check(
    photos: Photos,
    json_out: JsonFlag = False,
    max_pixels: Annotated[int | None, typer.Option(help="Skip larger images (bombs).")] = None,
) -> None:
    """What is there, and what is wrong with it: layout, classes, bad files, duplicates."""
    from pawnet.data.images import MAX_PIXELS
    from pawnet.data.scan import scan

    photoset = scan(photos, max_pixels=max_pixels or MAX_PIXELS)
    typer.echo(json.dumps(photoset.to_json(), indent=2) if json_out else photoset.report())


@command(data_app, "issues")
def data_issues(
    photos: Photos,
    json_out: JsonFlag = False,
    out: Annotated[Path | None, typer.Option(help="Where to write the HTML contact sheet "
                                             "(default: data_issues.html here); an existing "
                                             "file must be an earlier sheet.")] = None,
) -> None:
    """Probably wrong labels, near-duplicates (across splits: leaks), outliers, in a folder
    of photos or a training run's splits. Changes nothing in the folder."""
    from pawnet.data.issues import find_issues, format_issues, is_sheet, write_sheet
    from pawnet.storage import check_output_file

    sheet = check_output_file(out or "data_issues.html", "contact sheet", is_sheet)
    result = find_issues(photos)
    write_sheet(result, sheet)
    if json_out:
        typer.echo(json.dumps({**result, "sheet": str(sheet)}, indent=2))
        return
    typer.echo(format_issues(result))
    typer.echo(f"Contact sheet: {one_line(sheet)}")


@command(data_app, "show")
def data_show(
    photos: Photos,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("grid.png"),
    model: Annotated[str | None, typer.Option(help="Architecture (see `pawnet models`).")]
    = None,
    augment: Annotated[str | None, typer.Option(help="Augmentations, e.g. flip,zoom.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the images in px.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the batch and augmentation.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
) -> None:
    """Draw an 8x8 grid of one training batch, augmented as training will, labelled."""
    from pawnet.data.preview import show_batch

    settings = _given({"model": model, "augment": augment, "image_size": image_size,
                       "seed": seed})
    typer.echo(f"Wrote {one_line(show_batch(photos, out, config=config, **settings))}")


@command(app, "models")
def models() -> None:
    """List the architectures to train, and the built-in models, one line each."""
    from pawnet.models.registry import list_builtins, list_models

    specs = list_models()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        typer.echo(f"{spec.name.ljust(width)}  {spec.image_size}px  {spec.description}")
    typer.echo(f"{'keras:NAME'.ljust(width)}  224px  any keras.applications model, e.g. "
               "keras:ResNet50, keras:EfficientNetV2B0, keras:ConvNeXtTiny, "
               "keras:MobileNetV3Small: ImageNet weights downloaded by Keras, or --weights FILE")
    for builtin in list_builtins():
        typer.echo(f"{builtin.name.ljust(width)}  built-in, no training: {builtin.description}")


@command(app, "train")
@with_fields(Config, skip=("photos",))
def train(
    photos: Annotated[Path | None, typer.Argument(metavar="PHOTOS", help="Folder of photos.")]
    = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file; flags win over it.")]
    = None,
    **settings: Any,
) -> None:
    """Train a model; the run folder gets the bundle, curves, history and split manifest."""
    from pawnet.training import train as run_training

    settings = _given(settings)
    try:
        run_dir = run_training(photos, config=config, **settings)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; finished epochs are saved. Continue with: "
                   "pawnet train --resume RUN_DIR (the run folder printed above)", err=True)
        raise typer.Exit(130) from None
    if run_dir is None:
        typer.echo("This worker's part is done; the chief (worker 0) wrote the run folder")
        return
    shown = one_line(run_dir)
    typer.echo(f"Run folder: {shown}\nNext: pawnet evaluate {shown}  |  "
               f"pawnet predict {shown} PHOTO.jpg")


Runtime = Annotated[str, typer.Option(help="Where the model runs: auto (the fastest "
                                      "installed runtime that agrees with Keras), keras, onnx "
                                      "or litert.")]
Tta = Annotated[bool, typer.Option("--tta", help="Average each photo with its mirror image "
                                   "(test-time augmentation): twice the model time.")]
MinConfidence = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Label a photo 'unsure' when its top probability is below this "
    "(0: never); default: the model's, chosen on validation photos.")]


@command(app, "evaluate", tensorflow=False)
def evaluate(
    model: Model,
    photos: Annotated[Path | None, typer.Argument(metavar="PHOTOS",
                                                  help="Photos (default: the run's split).")]
    = None,
    split: Annotated[str, typer.Option(help="Split to use: test, val or train.")] = "test",
    json_out: JsonFlag = False,
    out: Annotated[Path | None, typer.Option(help="Report folder (default RUN_DIR/eval).")]
    = None,
    runtime: Runtime = "auto",
    tta: Tta = False,
    min_confidence: MinConfidence = None,
) -> None:
    """Per-class metrics, confusion matrix and misclassified photos on held-out photos."""
    from pawnet.reporting.evaluate import evaluate as run_evaluation
    from pawnet.reporting.evaluate import format_report

    report = run_evaluation(model, photos, split=split, out=out, runtime=runtime, tta=tta,
                            min_confidence=min_confidence)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(format_report(report))
    typer.echo(f"Report: {one_line(Path(report['out']) / 'report.html')} (and report.md)")


def _format(value: str) -> str:
    allowed = ("table", "csv", "kaggle", "json")  # json: the old spelling of --json
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of table, csv, kaggle")
    return value


SHARD_HELP = ("Label only share I of N (0 <= I < N): the photos whose SHA-256 (of the bytes; of "
              "the path when unreadable), its first 16 hex digits as a number, is I modulo N. "
              "Each part keeps this command's order, and one folder is listed sorted by "
              "path, so the parts' rows sorted by path are exactly those of one run.")


@command(app, "predict", tensorflow=False)
def predict(
    model: Model,
    paths: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    json_out: JsonFlag = False,
    fmt: Annotated[str, typer.Option("--format", callback=_format,
                                     help="table, csv, or kaggle (id,label: P(dog)).")]
    = "table",
    runtime: Runtime = "auto",
    tta: Tta = False,
    min_confidence: MinConfidence = None,
    shard: Annotated[str | None, typer.Option(metavar="I/N", help=SHARD_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Write the output to this file "
                                             "(atomically) instead of printing it; an "
                                             "existing file must be pawnet's own output.")]
    = None,
) -> None:
    """Label photos: a label and every class's probability per photo; 'neither' for a photo
    unlike the training photos, 'unsure' below the minimum confidence."""
    from pawnet.data.shards import parse_shard
    from pawnet.inference.predictor import expand_paths, format_predictions, is_predictions, load
    from pawnet.storage import atomic_write_text, check_output_file

    fmt = "json" if json_out else fmt
    if shard is not None:
        parse_shard(shard)  # a bad value stops before the model loads
    if out is not None:
        check_output_file(out, "predictions", is_predictions)
    predictor = load(model, runtime=runtime, tta=tta, min_confidence=min_confidence)
    results = predictor.predict(expand_paths(paths), shard=shard)
    text = format_predictions(results, predictor.classes, fmt)
    if out is None:  # color=True: click would strip escape sequences from CSV names
        typer.echo(text, color=True)
    else:
        atomic_write_text(out, text + "\n")
        typer.echo(f"Wrote {len(results)} predictions to {one_line(out)}", err=True)
    failed = [r for r in results if r.error]
    if fmt == "kaggle":
        for r in failed:
            typer.echo(f"skipped {one_line(r.path)}: {one_line(r.error)}", err=True)
    if results and len(failed) == len(results):  # an empty shard is no failure
        typer.echo("error: no photo could be predicted", err=True)
        raise typer.Exit(1)


@command(app, "export", tensorflow=False)
def export(
    model: Model,
    fmt: Annotated[str, typer.Option("--format", help="saved_model, litert or onnx.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="LiteRT only: integer weights and "
                                       "activations, calibrated on the run's training photos.")]
    = False,
    out: Annotated[Path | None, typer.Option(help="Folder to write (default "
                                             "RUN_DIR/export/FORMAT).")] = None,
    photos: Annotated[Path | None, typer.Option(help="Photos to check the export on "
                                                "(default: the run's test split).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Export a model (SavedModel, LiteRT, ONNX) with a JSON describing how to feed it, and
    check it against the bundle on real photos."""
    from pawnet.inference.export import export as run_export
    from pawnet.inference.export import format_export

    report = run_export(model, fmt, out=out, int8=int8, photos=photos)
    typer.echo(json.dumps(report, indent=2) if json_out else format_export(report))


@command(app, "serve", tensorflow=False)
@with_fields(ServeSettings)
def serve(model: Model, **values: Any) -> None:
    """Serve a model: REST API, web page at /, /healthz, /metrics, /docs."""
    from pawnet.serve.app import run

    run(model, ServeSettings(**_given(values)))


@command(app, "explain")
def explain(
    model: Model,
    paths: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the heat-maps (default "
                                             "RUN_DIR/explain).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Grad-CAM heat-maps: which part of each photo drove its label (overlay PNG + .npy)."""
    from pawnet.inference.predictor import expand_paths
    from pawnet.reporting.gradcam import explain as run_explain

    results = run_explain(model, expand_paths(paths), out)
    if json_out:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            typer.echo(f"{one_line(r['path'])}: error: {one_line(r['error'])}" if "error" in r
                       else f"{one_line(r['path'])}: {one_line(r['label'])} -> "
                            f"{one_line(r['overlay'])}")
    if all("error" in r for r in results):
        typer.echo("error: no photo could be explained", err=True)
        raise typer.Exit(1)


@command(app, "runs", tensorflow=False)
def runs(
    folders: Annotated[list[Path] | None, typer.Argument(
        metavar="DIR", help="A folder of runs (default: runs), or the runs to --compare.")]
    = None,
    compare: Annotated[bool, typer.Option("--compare", help="Show the given runs side by "
                                          "side: the settings that differ, and figures.")]
    = False,
    json_out: JsonFlag = False,
) -> None:
    """List training runs: model, status, data fingerprint, validation and test figures."""
    from pawnet.tools.runs import compare as compare_runs
    from pawnet.tools.runs import find_runs, format_compare, format_runs, summary

    folders = folders or [Path("runs")]
    if compare:
        result = compare_runs(folders)
        typer.echo(json.dumps(result, indent=2) if json_out else format_compare(result))
        return
    rows = [summary(run) for folder in folders for run in find_runs(folder)]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    elif rows:
        typer.echo(format_runs(rows))
    else:
        typer.echo(f"no training runs in {', '.join(map(one_line, folders))}. Try: pawnet "
                   "train PHOTOS", err=True)


@command(app, "bench")
def bench(
    photos: Photos,
    model: Annotated[str | None, typer.Option(help="Architecture (see `pawnet models`).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the input in px.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Photos per step.")] = None,
    augment: Annotated[str | None, typer.Option(help="e.g. flip,zoom,shear or none.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only this many photos.", min=2)] = None,
    epochs: Annotated[int, typer.Option(help="End-to-end training epochs.", min=2)] = 3,
    json_out: JsonFlag = False,
) -> None:
    """Where the time goes: input pipeline, compute limit, end to end, efficiency, memory."""
    from pawnet.tools.bench import bench as run_bench
    from pawnet.tools.bench import format_bench

    result = run_bench(photos, model=model, image_size=image_size, batch_size=batch_size,
                       augment=augment, limit=limit, epochs=epochs)
    typer.echo(json.dumps(result, indent=2) if json_out else format_bench(result))


@command(app, "demo")
def demo(
    photos: Annotated[Path | None, typer.Option("--photos", "--data",
                                                help="Photos to use instead of the search.")]
    = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
) -> None:
    """Find cats-vs-dogs photos, train the default model, evaluate it and predict a few."""
    from pawnet.tools.demo import run_demo

    run_demo(photos, epochs=epochs)


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

