"""`pawnet studio`: review, fix and grow a folder of photos in a local page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pawnet.cli.app import Photos, app
from pawnet.cli.options import command


@command(app, "studio", tensorflow=False)
def studio(
    photos: Photos,
    run: Annotated[Path | None, typer.Option(help="Training run: its model's answers, and "
                                             "retraining from the page.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels file for the decisions (default: "
                                                "FOLDER-labels.csv here).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
) -> None:
    """A page to browse, relabel and exclude photos, retrain in seconds, and label an inbox
    of new photos most useful first. The photos are never changed: decisions go to the
    labels file, which `pawnet train PHOTOS --labels FILE` applies."""
    from pawnet.studio.app import run as run_studio

    run_studio(photos, run, labels, host=host, port=port)
