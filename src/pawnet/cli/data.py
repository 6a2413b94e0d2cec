"""`pawnet data check|issues|show`: look at a folder of photos before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pawnet.cli.app import JsonFlag, Photos, data_app, given
from pawnet.cli.options import command
from pawnet.errors import one_line


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


@command(data_app, "issues", tensorflow=False)
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

    settings = given({"model": model, "augment": augment, "image_size": image_size,
                       "seed": seed})
    typer.echo(f"Wrote {one_line(show_batch(photos, out, config=config, **settings))}")
