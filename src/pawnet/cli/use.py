"""`pawnet evaluate|compare|predict|export|serve|explain`: put a trained model to work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pawnet.cli.app import JsonFlag, MinConfidence, Model, Runtime, Tta, app, given
from pawnet.cli.options import command, with_fields
from pawnet.errors import ConfigError, PawnetError, one_line
from pawnet.serve.settings import ServeSettings


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
    from pawnet.reporting.report import check_out_folder
    from pawnet.reporting.text import format_report

    check_out_folder(out)  # before minutes of work, not after
    report = run_evaluation(model, photos, split=split, runtime=runtime, tta=tta,
                            min_confidence=min_confidence)
    folder = report.write(out)
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(format_report(report))
    typer.echo(f"Report: {one_line(folder / 'report.html')} (and report.md, MODEL_CARD.md)")
    if report.bundle_card is not None:
        typer.echo(f"Model card: {one_line(report.bundle_card)}")


GATE_HELP = ("Exit 1, with one line saying why, when NEW is significantly worse (McNemar), "
             "a class's recall drops by more than --tolerance, or its share of unsure or "
             "neither answers rises by more than --max-unanswered-rise; exit 0 when it passes.")


@command(app, "compare", tensorflow=False)
def compare(
    new: Annotated[str, typer.Argument(metavar="NEW", help="The candidate model: a run "
                                       "folder, its bundle/ folder, or a built-in name.")],
    old: Annotated[str, typer.Argument(metavar="OLD", help="The model it would replace.")],
    photos: Annotated[Path | None, typer.Argument(
        metavar="PHOTOS", help="Photos (default: the held-out split both runs share).")]
    = None,
    gate: Annotated[bool, typer.Option("--gate", help=GATE_HELP)] = False,
    tolerance: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Largest drop of any class's recall that --gate lets through, "
        "as a fraction.")] = 0.02,
    alpha: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Significance level of McNemar's test for --gate.")] = 0.05,
    max_unanswered_rise: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Largest rise of the share of photos called unsure or neither "
        "that --gate lets through, as a fraction.")] = 0.02,
    split: Annotated[str, typer.Option(help="Split to use: test, val or train.")] = "test",
    json_out: JsonFlag = False,
    runtime: Runtime = "auto",
) -> None:
    """Two models on the same photos, side by side, with 95% intervals and McNemar's test:
    may NEW replace OLD?"""
    from pawnet.reporting.compare import check_gate, format_comparison, release_gate
    from pawnet.reporting.compare import compare as run_comparison

    check_gate(tolerance, alpha, max_unanswered_rise)  # before minutes of work, not after
    comparison = run_comparison(new, old, photos, split=split, runtime=runtime)
    passed, reason = release_gate(comparison, tolerance, alpha, max_unanswered_rise)
    verdict = f"gate: {'passed' if passed else 'failed'}: {reason}"
    if json_out:
        typer.echo(json.dumps({**comparison.to_json(), "gate": {
            "passed": passed, "reason": reason, "tolerance": tolerance, "alpha": alpha,
            "max_unanswered_rise": max_unanswered_rise}}, indent=2))
    else:
        typer.echo(format_comparison(comparison))
    if gate:
        typer.echo(verdict, err=json_out)  # stdout stays JSON
        if not passed:
            raise typer.Exit(1)


def _format(value: str) -> str:
    allowed = ("table", "csv", "kaggle", "json")  # json: the old spelling of --json
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of table, csv, kaggle")
    return value


SHARD_HELP = ("Label only share I of N (0 <= I < N): the photos whose SHA-256 (of the bytes; of "
              "the path when unreadable), its first 16 hex digits as a number, is I modulo N. "
              "Each part keeps this command's order, and one folder is listed sorted by "
              "path, so the parts' rows sorted by path are exactly those of one run.")
ENGINE_HELP = ("local (this process) or ray (worker processes on a Ray cluster, the same "
               "output; needs the ray extra of pawnet: docs/scaling.md).")


def _engine(value: str) -> str:
    if value not in ("local", "ray"):
        raise typer.BadParameter(f"{value!r} is not one of local, ray")
    return value


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
    engine: Annotated[str, typer.Option(callback=_engine, help=ENGINE_HELP)] = "local",
    address: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="--engine ray: the cluster's head (default: start a "
        "local one). Photos and model must be at the same path on every node.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="--engine ray: worker processes, each loading the model once "
        "(default: one per node).")] = None,
) -> None:
    """Label photos: a label and every class's probability per photo; 'neither' for a photo
    unlike the training photos, 'unsure' below the minimum confidence."""
    from pawnet.data.shards import parse_shard
    from pawnet.inference.output import format_predictions, is_predictions
    from pawnet.inference.predictor import expand_paths, load
    from pawnet.storage import atomic_write_text, check_output_file

    fmt = "json" if json_out else fmt
    _check_engine(engine, shard, address, workers)
    if shard is not None:
        parse_shard(shard)  # a bad value stops before the model loads
    if out is not None:
        check_output_file(out, "predictions", is_predictions)
    if engine == "ray":
        results, classes = _predict_on_ray(model, expand_paths(paths), address, workers,
                                           runtime=runtime, tta=tta,
                                           min_confidence=min_confidence)
    else:
        predictor = load(model, runtime=runtime, tta=tta, min_confidence=min_confidence)
        results = predictor.predict(expand_paths(paths), shard=shard)
        classes = predictor.classes
    text = format_predictions(results, classes, fmt)
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


def _check_engine(engine: str, shard: str | None, address: str | None,
                  workers: int | None) -> None:
    if engine == "ray" and shard is not None:
        raise ConfigError("--engine ray shares the photos out over its workers itself, so it "
                          "takes no --shard. Try: drop --shard, or --engine local")
    if engine == "local" and (address is not None or workers is not None):
        raise ConfigError("--address and --workers are for --engine ray. Try: --engine ray")


def _predict_on_ray(model: str, paths: list[str], address: str | None, workers: int | None,
                    **settings: Any) -> tuple[list, list[str]]:
    """`predict --engine ray`: the results and the model's classes; the model is checked
    here first, so a wrong one fails before a cluster starts."""
    from pawnet import quiet
    from pawnet.inference.bundle import resolve
    from pawnet.inference.ray_predict import import_ray, predict_on_ray

    import_ray()
    classes = list(resolve(model).spec.class_names)
    error = None
    with quiet.held():  # Ray's own lines on stderr, shown only when Ray itself fails
        try:
            results = predict_on_ray(model, paths, address=address, workers=workers,
                                     **settings)
        except PawnetError as exc:  # from a worker: its one line is enough
            error = exc
    if error is not None:
        raise error
    return results, classes


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

    run(model, ServeSettings(**given(values)))


@command(app, "explain")
def explain(
    model: Model,
    paths: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the heat-maps (default "
                                             "RUN_DIR/explain).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Heat-maps (Layer-CAM): which part of each photo drove its label (overlay PNG + .npy)."""
    from pawnet.inference.predictor import expand_paths
    from pawnet.reporting.explain import explain as run_explain

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
