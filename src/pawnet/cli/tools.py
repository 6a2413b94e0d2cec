"""`pawnet runs|bench|demo`: how runs went, where the time goes, and the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pawnet.cli.app import JsonFlag, Photos, app
from pawnet.cli.options import command
from pawnet.errors import one_line


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
