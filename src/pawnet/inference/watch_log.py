"""`SORTED/watch.csv`, the log of `pawnet watch`: one row per sorted photo (time, file,
label, one probability column per class, reason, destination, SHA-256), appended and
flushed after the photo's `done` is in the journal; on start a row torn by a kill is cut
and the rows a killed watch did not write are added (see `pawnet.inference.journal`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pawnet.errors import DataError, one_line
from pawnet.inference.journal import Entry
from pawnet.inference.watch_files import writing

LOG_NAME = "watch.csv"


class CsvLog:
    """`SORTED/watch.csv` (see the module)."""

    def __init__(self, into: Path, classes: list[str]):
        self.path = into / LOG_NAME
        self.header = ["time", "file", "label", *classes, "reason", "destination", "sha256"]
        self.classes = classes

    def repair(self, entries: list[Entry]) -> int:
        """Check the header, drop a torn last row, and add the rows of `entries` missing
        from the log (a watch killed between a photo's `done` and its row); returns how
        many rows were added. Without `entries`, only the header and the last byte are
        read, not the whole log."""
        if not entries and self._intact():
            return 0
        with writing(self.path, "read"):
            text = self.path.read_bytes() if self.path.exists() else b""
        if text and not text.endswith(b"\n"):  # a row torn by a kill
            text = text[: text.rfind(b"\n") + 1]
            with writing(self.path), open(self.path, "r+b") as f:
                f.truncate(len(text))
        rows = list(csv.reader(text.decode("utf-8", "replace").splitlines()))
        if rows:
            self._check(rows[0])
        written = {(row[-2], row[-1]) for row in rows[1:] if len(row) == len(self.header)}
        if not rows:
            self._append([self.header])
        missing = [self._row(e) for e in entries if (one_line(e.dest), e.sha256) not in written]
        self._append(missing)
        return len(missing)

    def _intact(self) -> bool:
        """Whether the log exists, has this model's header and ends with a whole row."""
        with writing(self.path, "read"):
            if not self.path.exists():
                return False
            with open(self.path, "rb") as f:
                head, end = f.readline(), f.seek(0, os.SEEK_END)
                if end == 0:
                    return False
                f.seek(end - 1)
                whole = f.read(1) == b"\n"
        if whole:
            self._check(next(csv.reader([head.decode("utf-8", "replace")]), []))
        return whole

    def _check(self, header: list[str]) -> None:
        if header != self.header:
            raise DataError(f"{one_line(self.path)} has the columns {', '.join(header)}; "
                            f"this model writes {', '.join(self.header)}. Try: --into another "
                            f"folder for this model, or move {LOG_NAME} away")

    def _row(self, entry: Entry) -> list[str]:
        row = entry.row or {}
        probabilities = row.get("probabilities") or {}
        return [row.get("time", ""), one_line(entry.src), row.get("label") or "",
                *(f"{probabilities[c]:.6f}" if c in probabilities else ""
                  for c in self.classes),
                one_line(row.get("reason") or ""), one_line(entry.dest), entry.sha256]

    def write(self, entries: list[Entry]) -> None:
        self._append([self._row(entry) for entry in entries])

    def _append(self, rows: list[list[str]]) -> None:
        if rows:
            with writing(self.path), open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(rows)
