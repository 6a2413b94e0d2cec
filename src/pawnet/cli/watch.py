"""`pawnet watch`: sort the photos arriving in a folder, unattended (docs/watch.md)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from pawnet.cli.app import MinConfidence, Runtime, app
from pawnet.cli.options import command


@command(app, "watch", tensorflow=False)
def watch(
    inbox: Annotated[Path, typer.Argument(metavar="INBOX", help="The folder photos arrive "
                                          "in (and its sub-folders).")],
    model: Annotated[str, typer.Option(metavar="MODEL", help="Trained model: a run folder, "
                                       "its bundle/ folder, or a built-in name.")],
    into: Annotated[Path, typer.Option(metavar="SORTED", help="Where photos go: "
                                       "SORTED/<class>/, SORTED/_review/<why>/, "
                                       "SORTED/_errors/, and the log SORTED/watch.csv.")],
    move: Annotated[bool, typer.Option("--move", help="Delete each photo from INBOX once it "
                                       "is safely in SORTED (default: copy).")] = False,
    once: Annotated[bool, typer.Option("--once", help="Sort what is in INBOX now (waiting "
                                       "for files still being written), then exit: for "
                                       "cron.")] = False,
    settle: Annotated[float, typer.Option(min=0.1, help="Seconds a file's size and time "
                                          "must stay unchanged before it is sorted (at "
                                          "least 0.1).")] = 1.0,  # watch.MIN_SETTLE
    poll: Annotated[bool, typer.Option("--poll", help="Rescan every SETTLE seconds instead "
                                       "of waiting for file-system events (network "
                                       "folders); automatic where events fail.")] = False,
    runtime: Runtime = "auto",
    min_confidence: MinConfidence = None,
) -> None:
    """Sort photos arriving in INBOX into class folders, each exactly once, even if killed
    and started again; until Ctrl-C (or SIGTERM), or with --once until INBOX is sorted."""
    from pawnet.inference.watch import watch as run_watch

    stop = threading.Event()

    def stop_soon(signum, frame) -> None:
        if stop.is_set():  # a second Ctrl-C: now (the journal keeps it safe)
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, stop_soon) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_watch(inbox, model, into, move=move, once=once, settle=settle, poll=poll,
                  runtime=runtime, min_confidence=min_confidence, stop=stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
