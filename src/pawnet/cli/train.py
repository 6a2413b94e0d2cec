"""`pawnet models|train`: the architectures to train, and training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pawnet.cli.app import app, given
from pawnet.cli.options import command, with_fields
from pawnet.config import Config
from pawnet.errors import one_line


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


@command(app, "train", tensorflow=False)  # the run imports it when it needs it
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

    settings = given(settings)
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
