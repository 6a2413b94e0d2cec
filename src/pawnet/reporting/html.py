"""`report.html`: the evaluation as one self-contained page a person can judge a model by.

Every image is embedded (data URLs), there is no script and nothing from the network, so
the file opens from disk anywhere. Sections: summary, per-class table, confusion matrix,
ROC, reliability, risk-coverage, misclassified photos with heat-maps and probabilities,
the least confident right answers, the model card (the `Card` that `MODEL_CARD.md` renders
too), training curves, provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.reporting.card import Block, Bullets, Card, Picture, Table
from pawnet.reporting.figures import Figures
from pawnet.run_folder import RunFolder
from pawnet.storage import atomic_write_text

SECTIONS = ("summary", "per-class", "confusion", "roc", "reliability", "risk-coverage",
            "misclassified", "least-confident", "model-card", "training", "provenance")
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 16px; color: #1d2330; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2em; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 4px 10px;
        border-bottom: 1px solid #dde2ea; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.big { font-size: 1.3rem; font-weight: 650; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
        gap: 12px; }
.card { border: 1px solid #dde2ea; border-radius: 8px; padding: 8px; font-size: .85rem; }
.card img { width: 100px; height: 100px; object-fit: cover; margin-right: 4px; }
.muted { color: #5b6577; font-size: .85rem; } img.plot { max-width: 100%; }
table.text td, table.text th { text-align: left; }
"""


THUMBNAIL = 128  # px: photos are shown this size, which keeps the page a few hundred KB


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _file(path: Path) -> str:
    kind = "jpeg" if path.suffix == ".jpg" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    return f'<img class="plot" alt="{html.escape(alt)}" src="{_file(path)}">'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _inline(text: str) -> str:
    """A card's text: escaped, with its `code` spans as code."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _card_block(block: Block, out_dir: Path) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline(h)}</th>" for h in block.head)
        body = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in row) + "</tr>"
                       for row in block.rows)
        return f'<table class="text"><tr>{head}</tr>{body}</table>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Picture):
        return _img(out_dir / block.file, block.alt)
    return f"<p>{_inline(block)}</p>"


def _model_card(card: Card | None, out_dir: Path) -> str:
    """The model card, as `MODEL_CARD.md` has it (`out_dir` holds its picture)."""
    if card is None:
        return '<p class="muted">(no model card)</p>'
    parts = [f"<h3>{_inline(card.title)}</h3>"]
    for section in card.sections:
        parts.append(f'<h4 id="card-{section.key}">{_inline(section.title)}</h4>')
        parts += [_card_block(block, out_dir) for block in section.blocks]
    return "".join(parts) + f'<p class="muted">{_inline(card.made)}</p>'


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'


def _photo_card(entry: dict, images: list[str]) -> str:
    probabilities = ", ".join(f"{html.escape(c)} {p:.3f}"
                              for c, p in (entry.get("probabilities") or {}).items())
    pictures = "".join(f'<img alt="photo" src="{src}">' for src in images)
    return (f'<div class="card">{pictures}<div><b>{html.escape(entry["true"])} → '
            f'{html.escape(entry["predicted"])}</b> ({entry["confidence"]:.3f})</div>'
            f'<div class="muted">{probabilities}</div>'
            f'<div class="muted">{html.escape(Path(entry["path"]).name)}</div></div>')


def _summary(report: Figures) -> str:
    v = report.verdicts
    answered = "-" if v["answered_accuracy"] is None else f"{v['answered_accuracy']:.4f}"
    rows = [["photos", report.n], ["unreadable", len(report.failed)],
            ["ROC-AUC", f"{report.roc_auc:.4f}" if report.roc_auc is not None else "-"],
            ["log loss", f"{report.log_loss:.4f}" if report.log_loss is not None else "-"],
            ["expected calibration error", f"{report.expected_calibration_error:.4f} "
             f"(uncalibrated {report.expected_calibration_error_uncalibrated:.4f})"],
            ["answered / unsure / neither", f"{v['answered']} / {v['unsure']} / {v['neither']}"],
            ["accuracy of those answered", answered],
            *[[f"not answered: {kind}", n]
              for kind, n in v.get("reasons", {}).items()],
            ["test-time augmentation", "on" if report.tta else "off"]]
    return (f'<p class="big">accuracy {report.accuracy:.4f}</p>'
            f'<p>{html.escape(report.model)} on {html.escape(report.source)}</p>'
            + _table(["", "value"], rows))


def _provenance(bundle) -> str:
    record = bundle.provenance or {}
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    rows = [["model", bundle.spec.model_name], ["classes", ", ".join(bundle.spec.class_names)],
            ["data fingerprint", data.get("fingerprint", "-")],
            ["created", record.get("created", "-")],
            ["versions", json.dumps(record.get("versions", {}))],
            ["bundle fingerprint", bundle.fingerprint]]
    settings = ""
    config = bundle.path / "config.yaml" if bundle.path else None
    if config is not None and config.is_file():
        settings = f"<h3>settings</h3><pre>{html.escape(config.read_text())}</pre>"
    return _table(["", "value"], rows) + settings


def write_html(report: Figures, out_dir: Path, bundle,
               misclassified: list[tuple[np.ndarray, np.ndarray | None]],
               least_confident: list[np.ndarray], card: Card | None = None) -> Path:
    """Write `out_dir/report.html` from an evaluation report and the photos it shows:
    the misclassified ones (pixels, and pixels with their heat-map or None) and the least
    confident right ones; and the model `card`, whose picture is in `out_dir`."""
    classes = report.classes
    per_class = [[c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                  m["support"]] for c, m in report.per_class.items()]
    confusion = [[f"true {c}", *row] for c, row in zip(classes, report.confusion_matrix,
                                                       strict=True)]
    coverage = [[f"{r['coverage']:.0%}", f"{r['accuracy']:.4f}", f"{r['threshold']:.4f}"]
                for r in report.risk_coverage["at"]]
    wrong = "".join(_photo_card(entry, [_png(p)] + ([_png(h)] if h is not None else []))
                    for entry, (p, h) in zip(report.misclassified, misclassified, strict=False))
    timid = "".join(_photo_card(entry, [_png(p)])
                    for entry, p in zip(report.least_confident_correct, least_confident,
                                        strict=True))
    run_dir = bundle.run_dir
    how = f", {html.escape(note)}" if (note := report.heatmap_note()) else ""
    parts = [
        _section("summary", "Summary", _summary(report)),
        _section("per-class", "Per class", _table(
            ["class", "precision", "recall", "F1", "support"], per_class)),
        _section("confusion", "Confusion matrix", _table(
            ["", *[f"predicted {c}" for c in classes]], confusion)
            + _img(out_dir / "confusion.png", "confusion matrix")),
        _section("roc", "ROC", _img(out_dir / "roc.png", "ROC curve")),
        _section("reliability", "Reliability (calibration)",
                 _img(out_dir / "reliability.png", "reliability diagram")),
        _section("risk-coverage", "Answering only the most confident photos", _table(
            ["coverage", "accuracy", "confidence at least"], coverage)
            + _img(out_dir / "risk_coverage.png", "risk-coverage curve")),
        _section("misclassified", f"Misclassified photos ({len(report.misclassified)}; "
                 f"each with where the model looked{how})",
                 f'<div class="grid">{wrong}</div>' if wrong else "<p>none</p>"),
        _section("least-confident", "The least confident right answers",
                 f'<div class="grid">{timid}</div>' if timid else "<p>none</p>"),
        _section("model-card", "Model card", _model_card(card, out_dir)),
        _section("training", "Training curves", _img(RunFolder(run_dir).curves, "training curves")
                 if run_dir else '<p class="muted">(no training run: a built-in model)</p>'),
        _section("provenance", "Provenance", _provenance(bundle)),
    ]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>pawnet evaluation: {html.escape(report.model)}</title>'
            f"<style>{STYLE}</style></head><body><h1>Evaluation of "
            f"{html.escape(report.model)}</h1>{''.join(parts)}</body></html>\n")
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
