"""The `pawnet` command group and what its commands share: the global options, and the
argument and option types used by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pawnet import logs, quiet
from pawnet.cli.options import OneLineErrors

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
    ctx.with_resource(logs.console())
    ctx.with_resource(quiet.native_logs_shown(verbose))


def given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Photos = Annotated[Path, typer.Argument(metavar="PHOTOS",
                                        help="Folder of photos (any supported layout).")]
Model = Annotated[str, typer.Argument(
    metavar="MODEL", help="Trained model: a run folder, its bundle/ folder, or a built-in name.")]


Runtime = Annotated[str, typer.Option(help="Where the model runs: auto (the fastest "
                                      "installed runtime that agrees with Keras), keras, onnx "
                                      "or litert.")]
Tta = Annotated[bool, typer.Option("--tta", help="Average each photo with its mirror image "
                                   "(test-time augmentation): twice the model time.")]
MinConfidence = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Label a photo 'unsure' when its top probability is below this "
    "(0: never); default: the model's, chosen on validation photos.")]
