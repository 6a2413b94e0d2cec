"""`pawnet runs`: the training runs in a folder, a line each, and runs side by side.

A run folder is what `pawnet train` writes (`config.yaml`, `manifest.csv`, ...). Its status
is `finished` (it holds a bundle), `resumable` (an epoch finished and was checkpointed:
`pawnet train --resume RUN` continues after it) or `interrupted` (stopped before its first
checkpoint: `--resume` starts it again from the first epoch). Nothing here writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pawnet.data.splits import fingerprint, read_manifest
from pawnet.errors import ConfigError, DataError, one_line
from pawnet.reporting.text import aligned
from pawnet.run_folder import RunFolder, read_history
from pawnet.storage import read_text_file

COMPARED_METRICS = ("status", "model", "data_fingerprint", "best_epoch", "val_loss",
                    "val_accuracy", "test_accuracy", "wall_s")


def find_runs(root: str | Path) -> list[Path]:
    """Run folders in `root` (or `root` itself), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no folder {root}. Try: pawnet runs runs (where pawnet train writes)")
    if RunFolder(root).is_run():
        return [root]
    found = [p for p in root.iterdir() if p.is_dir() and RunFolder(p).is_run()]
    return sorted(found, key=lambda p: (RunFolder(p).config.stat().st_mtime, p.name))


def _json(path: Path) -> dict:
    try:
        data = json.loads(read_text_file(path))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _settings(run: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(read_text_file(RunFolder(run).config))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _status(run: Path) -> str:
    folder = RunFolder(run)
    if (folder.bundle / "bundle.json").is_file():
        return "finished"
    checkpoints = folder.checkpoints
    if (checkpoints / "state.json").is_file() and (checkpoints / "last").exists():
        return "resumable"
    return "interrupted"


def _latest_evaluation(run: Path) -> dict:
    reports = RunFolder(run).report_files()
    return _json(max(reports, key=lambda p: p.stat().st_mtime)) if reports else {}


def _data_fingerprint(run: Path, provenance: dict) -> str | None:
    data = provenance.get("data")
    if isinstance(data, dict) and isinstance(data.get("fingerprint"), str):
        return data["fingerprint"]
    try:
        return fingerprint(read_manifest(RunFolder(run).manifest))
    except (OSError, DataError, ValueError, KeyError):
        return None


def summary(run: str | Path) -> dict[str, Any]:
    """What one run is and how it went: model, status, data fingerprint, best validation
    figures, the newest evaluation's accuracy, and the training time.

    Raises:
        DataError: `run` is not a run folder.
    """
    run = Path(run)
    if not RunFolder(run).is_run():
        raise DataError(f"{run} is not a pawnet run folder (no config.yaml and manifest.csv). "
                        "Try: pawnet runs to list the runs")
    provenance = _json(RunFolder(run).bundle / "provenance.json")
    metrics = provenance.get("metrics") if isinstance(provenance.get("metrics"), dict) else {}
    training = provenance.get("training") if isinstance(provenance.get("training"), dict) else {}
    history = read_history(RunFolder(run).history)
    scored = [row for row in history if "val_loss" in row]
    best = min(scored, key=lambda row: row["val_loss"]) if scored else {}
    evaluation = _latest_evaluation(run)
    return {
        "run": str(run), "model": _settings(run).get("model"), "status": _status(run),
        "data_fingerprint": _data_fingerprint(run, provenance),
        "epochs": len(history),
        "best_epoch": int(best["epoch"]) if "epoch" in best else None,
        "val_loss": metrics.get("val_loss", best.get("val_loss")),
        "val_accuracy": metrics.get("val_accuracy", best.get("val_accuracy")),
        "test_accuracy": evaluation.get("accuracy"), "test_source": evaluation.get("source"),
        "wall_s": training.get("fit_seconds_this_session"),
        "created": provenance.get("created"),
    }


def compare(runs: list[str | Path]) -> dict[str, Any]:
    """Runs side by side: every setting that differs between them, and their figures.

    Raises:
        ConfigError: fewer than two runs.
        DataError: one is not a run folder.
    """
    if len(runs) < 2:
        raise ConfigError("--compare needs two or more run folders. Try: pawnet runs "
                          "--compare runs/train runs/train2")
    summaries = [summary(run) for run in runs]
    settings = [_settings(Path(run)) for run in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differ = {k: [s.get(k) for s in settings] for k in keys
              if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1}
    return {"runs": [s["run"] for s in summaries], "settings": differ,
            "metrics": {k: [s[k] for s in summaries] for k in COMPARED_METRICS}}


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if key == "wall_s" else f"{value:.4f}"
    if isinstance(value, list):
        return one_line(",".join(map(str, value))) or "none"
    text = one_line(value)
    return text[:12] if len(text) == 64 else text  # a fingerprint: its first 12 digits


def format_runs(rows: list[dict[str, Any]]) -> str:
    """The runs as an aligned table."""
    columns = ("run", "model", "status", "data_fingerprint", "best_epoch", "val_loss",
               "val_accuracy", "test_accuracy", "wall_s")
    heads = ("run", "model", "status", "data", "best", "val_loss", "val_acc", "test_acc",
             "wall_s")
    return aligned([heads, *([_cell(row[c], c) for c in columns] for row in rows)])


def format_compare(result: dict[str, Any]) -> str:
    """Runs side by side: the settings that differ, then the figures."""
    names = [one_line(Path(r).name) for r in result["runs"]]
    rows = [("", *names)]
    rows += [(one_line(key), *map(_cell, values)) for key, values in result["settings"].items()]
    if not result["settings"]:
        rows.append(("(same settings)", *[""] * len(names)))
    rows.append(("--", *["--"] * len(names)))
    rows += [(key, *(_cell(v, key) for v in values))
             for key, values in result["metrics"].items()]
    return aligned(rows)
