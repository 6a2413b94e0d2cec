"""An evaluation as text: `format_report` for terminals, `markdown` for `report.md`, and
`card_markdown` for the model card's `MODEL_CARD.md`.

The first two read one `Figures` (as `report.html` does), so they show the same figures the
same way: a two-class ROC-AUC is shown whenever there is one, 0.0 included. The card is a
`Card` (reporting/card.py), which `report.html` renders too.
"""

from __future__ import annotations

from collections.abc import Sequence

from pawnet.errors import one_line
from pawnet.inference.bundle import CARD
from pawnet.reporting.card import Block, Bullets, Card, Picture, Table
from pawnet.reporting.figures import Figures


def aligned(rows: Sequence[Sequence[str]], gap: int = 2) -> str:
    """Rows of cells as a text table for terminals: each column as wide as its widest cell,
    `gap` spaces between columns, no trailing spaces."""
    if not rows:
        return ""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join((" " * gap).join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def verdict_line(report: Figures) -> str:
    """How many photos were answered (and how accurately), called unsure or neither, why."""
    v = report.verdicts
    accuracy = "-" if v["answered_accuracy"] is None else f"{v['answered_accuracy']:.4f}"
    reasons = v.get("reasons", {})
    why = "; ".join(f"{n} {kind}" for kind, n in reasons.items() if n)
    return (f"answered {v['answered']} of {report.n} (accuracy {accuracy}); unsure "
            f"{v['unsure']}, neither {v['neither']}" + (f" ({why})" if why else ""))


def confusion_text(report: Figures) -> str:
    """The confusion matrix as aligned text, for terminals."""
    classes = [one_line(c) for c in report.classes]
    width = max(8, *(len(c) for c in classes)) + 2
    head = "true \\ pred".ljust(width) + "".join(c.rjust(width) for c in classes)
    rows = [c.ljust(width) + "".join(str(v).rjust(width) for v in row)
            for c, row in zip(classes, report.confusion_matrix, strict=True)]
    return "\n".join([head, *rows])


def format_report(report: Figures) -> str:
    """The report as text for a terminal: accuracy, per-class table, confusion matrix."""
    lines = [
        f"Evaluated {report.n} photos from {one_line(report.source)}"
        + (" (with flip test-time augmentation)" if report.tta else ""),
        f"accuracy {report.accuracy:.4f}"
        + (f"  ROC-AUC {report.roc_auc:.4f}" if report.roc_auc is not None else "")
        + (f"  log loss {report.log_loss:.4f}" if report.log_loss is not None else "")
        + f"  ECE {report.expected_calibration_error:.4f} (uncalibrated "
        f"{report.expected_calibration_error_uncalibrated:.4f})",
        verdict_line(report),
        f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, m in report.per_class.items():
        lines.append(f"{one_line(name):<12}{m['precision']:>10.4f}{m['recall']:>10.4f}"
                     f"{m['f1']:>10.4f}{m['support']:>10}")
    lines.append(confusion_text(report))
    if report.failed:
        lines.append(f"{len(report.failed)} photos could not be read (listed in report.json)")
    return "\n".join(lines)


def markdown(report: Figures) -> str:
    """`report.md`: the figures, tables, plots (by file name) and misclassified photos."""
    lines = [
        f"# Evaluation of {one_line(report.model)}",
        "",
        f"Photos: {one_line(report.source)} — {report.n} evaluated"
        + (f", {len(report.failed)} unreadable" if report.failed else ""),
        "",
        f"**Accuracy: {report.accuracy:.4f}**"
        + (f" · ROC-AUC {report.roc_auc:.4f}" if report.roc_auc is not None else "")
        + (f" · log loss {report.log_loss:.4f}" if report.log_loss is not None else "")
        + f" · expected calibration error {report.expected_calibration_error:.4f} "
        f"(uncalibrated {report.expected_calibration_error_uncalibrated:.4f}, temperature "
        f"{report.temperature:.3f})",
        "",
        verdict_line(report),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in report.per_class.items():
        lines.append(f"| {one_line(name)} | {m['precision']:.4f} | {m['recall']:.4f} | "
                     f"{m['f1']:.4f} | {m['support']} |")
    classes = [one_line(c) for c in report.classes]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, report.confusion_matrix, strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion.png)", "",
              "Answering only the most confident photos (risk-coverage):", "",
              "| coverage | accuracy | confidence at least |", "|---|---|---|"]
    lines += [f"| {r['coverage']:.0%} | {r['accuracy']:.4f} | {r['threshold']:.4f} |"
              for r in report.risk_coverage["at"]]
    lines += ["", "![risk-coverage](risk_coverage.png) ![reliability](reliability.png)", "",
              f"Misclassified photos: {len(report.misclassified)} "
              "(most confident first, in misclassified.png)", ""]
    if report.heatmaps:
        lines += [f"Where the model looked for the class it predicted "
                  f"({report.heatmap_note()}):", "",
                  f"![where the model looked]({report.heatmaps})", ""]
    lines += [f"- {one_line(m['path'])}: {one_line(m['true'])} predicted as "
              f"{one_line(m['predicted'])} ({m['confidence']:.3f})"
              for m in report.misclassified[:20]]
    lines += ["", f"The model card: [{CARD}]({CARD})"]
    return "\n".join(lines) + "\n"


def card_markdown(card: Card) -> str:
    """`MODEL_CARD.md`: the card as Markdown."""
    lines = [f"# {card.title}", ""]
    for section in card.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*_markdown_block(block), ""]
    return "\n".join([*lines, card.made]) + "\n"


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Table):
        def row(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        return [row(block.head), "|" + "---|" * len(block.head), *map(row, block.rows)]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Picture):
        return [f"![{block.alt}]({block.file})"]
    return [block]
