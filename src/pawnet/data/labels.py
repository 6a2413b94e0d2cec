"""A labels file: a person's decisions about photos, kept apart from the photos themselves.

```
path,label,time
cat/cat.12.jpg,dog,2026-12-03T21:50:01Z
dog/dog.7.jpg,exclude,2026-12-03T21:50:04Z
```

`path` is relative to the folder of photos trained on, with `/` between folders (a photo
labelled from an inbox next to it starts with `../`); `label` is a class name, or `exclude`
to leave the photo out; `time` is when it was decided (UTC). The studio writes it, one
decision at a time, each write a whole new file renamed over the old one, so a kill at any
moment leaves a file that loads. `pawnet train PHOTOS --labels FILE` applies it (see
`apply_labels`); the photos are never changed, moved or deleted.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pawnet.data.checks import Labelled
from pawnet.errors import DataError, one_line
from pawnet.storage import atomic_write_text, read_text_file

EXCLUDE = "exclude"
FIELDS = ("path", "label", "time")


@dataclass(frozen=True)
class Decision:
    """One photo's label, or `EXCLUDE`, decided by a person at `time`."""

    path: str
    label: str
    time: str


def now() -> str:
    """The time of a decision as written in the file: ISO 8601, UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative_path(photo: str | Path, root: str | Path) -> str:
    """A photo's path as the labels file writes it: relative to `root` (`../` first when it
    is not inside it), `/`-separated."""
    return Path(os.path.relpath(Path(photo).resolve(), Path(root).resolve())).as_posix()


def resolve(path: str, root: str | Path) -> Path:
    """Where a path of the labels file points, `root` being the folder of photos."""
    return Path(os.path.normpath(Path(root).resolve() / path))


def _check_row(file: str | Path, number: int, row: list[str]) -> Decision:
    if len(row) != len(FIELDS):
        raise DataError(f"labels file {one_line(file)}, line {number}: {len(row)} fields, not "
                        f"{len(FIELDS)} ({','.join(FIELDS)}). Try: fix or remove that line")
    path, label, time = row[0], row[1].strip(), row[2].strip()
    pure = PurePosixPath(path)
    if not path.strip() or pure.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", path):
        raise DataError(f"labels file {one_line(file)}, line {number}: path {one_line(path)!r} "
                        "is not relative to the photos folder. Try: a path like cat/cat.1.jpg")
    if not label:
        raise DataError(f"labels file {one_line(file)}, line {number}: no label. Try: a class "
                        f"name or {EXCLUDE}")
    return Decision(pure.as_posix(), label, time)


def read_labels(file: str | Path) -> dict[str, Decision]:
    """The decisions in a labels file, by path; a later line for a path wins.

    Raises:
        DataError: the file is missing, unreadable, or a line is not a decision.
    """
    try:
        text = read_text_file(file)
    except FileNotFoundError:
        raise DataError(f"labels file not found: {one_line(file)}. Try: pawnet studio PHOTOS "
                        "--labels FILE writes one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file {one_line(file)} cannot be read ({one_line(exc)})"
                        ) from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as exc:
        raise DataError(f"labels file {one_line(file)} is not CSV ({one_line(exc)})") from None
    if not rows or tuple(v.strip() for v in rows[0]) != FIELDS:
        raise DataError(f"labels file {one_line(file)} does not start with the header "
                        f"{','.join(FIELDS)}. Try: a file written by pawnet studio")
    decisions: dict[str, Decision] = {}
    for number, row in enumerate(rows[1:], start=2):
        decision = _check_row(file, number, row)
        decisions.pop(decision.path, None)  # keep the file's order of last decisions
        decisions[decision.path] = decision
    return decisions


def write_labels(file: str | Path, decisions: dict[str, Decision]) -> None:
    """Write the decisions as a whole new file, renamed over the old one."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows((d.path, d.label, d.time) for d in decisions.values())
    atomic_write_text(file, buffer.getvalue())


class LabelsFile:
    """The decisions of one session over one folder: loaded at the start (when the file
    exists), each change written at once, and undone in the reverse order they were made.
    A change may be about several paths at once (the copies of one photo); it is undone as
    one."""

    def __init__(self, file: str | Path):
        self.file = Path(file)
        self.decisions = read_labels(self.file) if self.file.exists() else {}
        self._undo: list[list[tuple[str, Decision | None]]] = []

    def get(self, path: str) -> Decision | None:
        return self.decisions.get(path)

    def decide(self, paths: str | list[str], label: str | None) -> None:
        """Record `label` (a class or `EXCLUDE`; None forgets the decision, so the folder
        labels the photo again) for the photos at `paths` (relative).

        Raises:
            OSError: the file cannot be written; nothing changed then.
        """
        paths = [paths] if isinstance(paths, str) else paths
        before = [(path, self.decisions.get(path)) for path in paths]
        changed = {k: v for k, v in self.decisions.items() if k not in paths}
        if label is not None:
            changed |= {path: Decision(path, label, now()) for path in paths}
        if changed != self.decisions:
            self._commit(changed)
            self._undo.append(before)

    def clear(self, paths: str | list[str]) -> None:
        """Forget the decisions about photos: they are labelled by their folders again."""
        self.decide(paths, None)

    def undo(self) -> str | None:
        """Take back the last change of this session; the (first) path it was about, or
        None when there is nothing to undo.

        Raises:
            OSError: the file cannot be written; nothing changed then.
        """
        if not self._undo:
            return None
        before = self._undo[-1]
        changed = {k: v for k, v in self.decisions.items() if k not in dict(before)}
        changed |= {path: decision for path, decision in before if decision is not None}
        self._commit(changed)
        self._undo.pop()
        return before[0][0]

    def _commit(self, decisions: dict[str, Decision]) -> None:
        write_labels(self.file, decisions)  # first on disk, then in memory
        self.decisions = decisions


def apply_labels(items: Labelled, decisions: dict[str, Decision], root: str | Path
                 ) -> tuple[Labelled, list[str], list[str], set[Path]]:
    """Apply a labels file to the files a layout found under `root`, before they are checked.

    A file decided `exclude` is left out; a class decision gives a file its label (also one
    the layout could not label); a decided file the layout did not find (an inbox photo,
    `../inbox/a.jpg`) is added with no given split.

    Returns:
        (items, excluded files, decided paths that are no file (as written), files whose
        label now comes from the labels file).
    """
    if not decisions:
        return items, [], [], set()
    index = {Path(os.path.normpath(path)): n for n, (path, _, _) in enumerate(items)}
    real: dict[Path, int] | None = None  # by real path, made when a decision needs it
    labels: dict[int, str] = {}
    added: dict[Path, str] = {}
    unknown: list[str] = []
    for decision in decisions.values():
        target = resolve(decision.path, root)
        n = index.get(target)
        if n is None and target.is_file():
            if real is None:  # a photo reached through a link, as `relative_path` writes it
                real = {Path(os.path.realpath(path)): n for path, n in index.items()}
            n = real.get(Path(os.path.realpath(target)))
        if n is not None:
            labels[n] = decision.label
        elif target.is_file():
            added[target] = decision.label
        else:
            unknown.append(decision.path)
    kept: Labelled = []
    excluded: list[str] = []
    relabelled: set[Path] = set()
    for n, (path, label, split) in enumerate(items):
        decided = labels.get(n, label)
        if n in labels and decided == EXCLUDE:  # (a class folder may be named exclude)
            excluded.append(str(path))
            continue
        if decided != label:
            relabelled.add(path)
        kept.append((path, decided, split))
    for path, label in added.items():
        if label != EXCLUDE:
            kept.append((path, label, None))
            relabelled.add(path)
    return kept, sorted(excluded), unknown, relabelled
