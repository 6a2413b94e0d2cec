"""Predictions written out for people and programs: a table, JSON, CSV, or a Kaggle Dogs
vs. Cats submission."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from pawnet.errors import ConfigError, one_line
from pawnet.inference.predictor import Prediction

OUTPUT_FORMATS = ("table", "json", "csv", "kaggle")  # what `format_predictions` writes


def _kaggle(results: Sequence[Prediction], classes: list[str]) -> list[list]:
    """`id,label` rows of a Kaggle Dogs vs. Cats submission: the probability of dog."""
    lowered = [c.lower() for c in classes]
    if "dog" not in lowered:
        raise ConfigError(f"--format kaggle needs a 'dog' class; the model has "
                          f"{', '.join(classes)}. Try: --format csv")
    dog = classes[lowered.index("dog")]
    rows = []
    for r in results:
        if r.probabilities:
            numbers = re.findall(r"\d+", Path(r.path).stem)
            if not numbers:
                raise ConfigError(f"--format kaggle needs a number in each file name, e.g. "
                                  f"1.jpg; received: {r.path}")
            rows.append([int(numbers[-1]), f"{r.probabilities[dog]:.6f}"])
    return [["id", "label"], *sorted(rows, key=lambda row: row[0])]


def _table(results: Sequence[Prediction], classes: list[str]) -> str:
    paths = [one_line(r.path) for r in results]
    width = max([len(p) for p in paths] + [4])
    scored = any(r.ood_score is not None for r in results)
    lines = [f"{'path'.ljust(width)}  {'label':<10}"
             + "".join(f"{one_line(c):>10}" for c in classes)
             + (f"{'ood_score':>10}" if scored else "")
             + ("  reason" if any(r.reason for r in results) else "")]
    for r, path in zip(results, paths, strict=True):
        if r.error:
            lines.append(f"{path.ljust(width)}  error: {one_line(r.error)}")
        else:
            score = f"{r.ood_score:>10.4f}" if r.ood_score is not None else ""
            lines.append(f"{path.ljust(width)}  {one_line(r.label):<10}"
                         + "".join(f"{r.probabilities[c]:>10.4f}" for c in classes) + score
                         + (f"  {r.reason}" if r.reason else ""))
    return "\n".join(lines)


def is_predictions(head: bytes) -> bool:
    """Whether a file's first bytes are `format_predictions` output (any format)."""
    text = head.decode("utf-8", "replace").lstrip()
    return (text.startswith(("path,label,", "id,label\n", "path  ")) or text.startswith("[]")
            or re.match(r'\[\s*\{\s*"path":', text) is not None)


def format_predictions(results: Sequence[Prediction], classes: list[str],
                       fmt: str = "table") -> str:
    """Render predictions as a table, JSON, CSV, or a Kaggle Dogs vs. Cats submission.

    Raises:
        ConfigError: kaggle asked of a model without a dog class or of unnumbered files.
    """
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    if fmt == "table":
        return _table(results, classes)
    if fmt == "csv":
        rows = [["path", "label", *classes, "ood_score", "reason", "error"]]
        for r in results:
            probs = ([f"{r.probabilities[c]:.6f}" for c in classes] if r.probabilities
                     else [""] * len(classes))
            score = "" if r.ood_score is None else f"{r.ood_score:.6f}"
            rows.append([r.path, r.label or "", *probs, score, r.reason or "", r.error or ""])
    elif fmt == "kaggle":
        rows = _kaggle(results, classes)
    else:
        raise ConfigError(f"unknown format {fmt!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().rstrip("\n")
