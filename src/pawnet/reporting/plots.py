"""Every picture pawnet draws: learning curves, confusion matrix, photo grids, photo sheets.

Each figure is a `matplotlib.figure.Figure` drawn directly, never through pyplot, so
importing or drawing never switches matplotlib's backend (a notebook's stays its own); it
is written atomically to a PNG. Text in them (class names, file names) is drawn as given,
never parsed as mathtext, with control characters written out as in the terminal. The one
exception, `photo_sheet` (the model card's confusions), is small JPEG bytes drawn with PIL.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from pawnet.errors import one_line
from pawnet.storage import atomic_write_bytes

SOFTWARE = "pawnet"  # the PNG's Software text: how pawnet knows a PNG is its own
SHEET_THUMB = 96  # px, the side of each photo in a photo sheet
SHEET_CAPTION = 16  # px, the caption strip above each of its rows


def is_own_png(head: bytes) -> bool:
    """Whether a PNG's first bytes say pawnet drew it."""
    return head.startswith(b"\x89PNG") and b"Software\x00" + SOFTWARE.encode() in head


def _plain_text(draw: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with every text taken literally: a class named `$\\foo$` is not mathtext."""

    @functools.wraps(draw)
    def drawing(*args, **kwargs) -> Path:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawing


def _save(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight",
                metadata={"Software": SOFTWARE})
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


@_plain_text
def plot_curves(rows: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, training vs validation, side by side."""
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "o-"), ("val_", "s-")):
            values = [r.get(prefix + metric) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=("validation" if prefix else "training"))
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(fig, path)


@_plain_text
def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix with counts; rows are true classes, columns predicted ones."""
    classes = [one_line(c) for c in classes]
    n = len(classes)
    fig = Figure(figsize=(2 + 0.8 * n, 1.6 + 0.8 * n))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if matrix[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    ax.set_title("confusion matrix")
    return _save(fig, path)


@_plain_text
def plot_reliability(bins: Sequence[dict], path: str | Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin (a calibrated model lies on
    the diagonal), with the photo counts."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    for b in bins:
        ax.bar(b["low"], b["accuracy"], width=b["high"] - b["low"], align="edge",
               color="tab:blue", alpha=0.6, edgecolor="white")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
            color="tab:orange", label="this model")
    for b in bins:
        ax.annotate(str(b["n"]), (b["confidence"], b["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (photos per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


@_plain_text
def plot_risk_coverage(curve: Sequence[dict], path: str | Path) -> Path:
    """Accuracy against coverage when only the most confident photos are answered."""
    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.subplots()
    ax.plot([r["coverage"] for r in curve], [r["accuracy"] for r in curve], color="tab:blue")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("coverage (share of photos answered, most confident first)")
    ax.set_ylabel("accuracy of those answered")
    ax.set_title("risk-coverage")
    ax.grid(alpha=0.3)
    return _save(fig, path)


@_plain_text
def plot_grid(
    images: np.ndarray, titles: Sequence[str], path: str | Path, columns: int = 8,
    title: str | None = None,
) -> Path:
    """A grid of uint8 images, each with a short caption (a label, or true/predicted)."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(columns * 1.6, rows * 1.8))
    axes = fig.subplots(rows, columns)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, img, caption in zip(np.atleast_1d(axes).ravel(), images, titles, strict=False):
        ax.imshow(np.asarray(img).astype(np.uint8))
        ax.set_title(one_line(caption), fontsize=7)
    if title:
        fig.suptitle(one_line(title))
    return _save(fig, path)


@_plain_text
def plot_roc(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str],
             path: str | Path) -> Path:
    """ROC curve of each class against the rest (one curve for two classes)."""
    from sklearn.metrics import auc, roc_curve

    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    shown = [1] if len(classes) == 2 else range(len(classes))
    for k in shown:
        if len(set((truth == k).tolist())) < 2:
            continue  # a class absent (or alone) has no curve
        fpr, tpr, _ = roc_curve(truth == k, probs[:, k])
        ax.plot(fpr, tpr, label=f"{one_line(classes[k])} (AUC {auc(fpr, tpr):.4f})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    if ax.get_legend_handles_labels()[0]:  # none when a class is absent from the photos
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def photo_sheet(rows: Sequence[tuple[str, Sequence[str | Path]]], columns: int
                ) -> bytes | None:
    """Rows of photos as one JPEG: each row's caption above its first `columns` photos,
    cropped to `SHEET_THUMB` px squares. A photo that cannot be read (moved or changed
    since) is left out, and so is a row left without any; None when no photo is left."""
    from PIL import Image, ImageDraw, ImageOps

    from pawnet.data.images import load_preview
    from pawnet.errors import PawnetError

    drawn = []
    for caption, paths in rows:
        tiles = []
        for path in paths[:columns]:
            try:
                pixels = load_preview(path, 2 * SHEET_THUMB)
            except (PawnetError, OSError):
                continue
            tiles.append(ImageOps.fit(Image.fromarray(pixels), (SHEET_THUMB, SHEET_THUMB)))
        if tiles:
            drawn.append((caption, tiles))
    if not drawn:
        return None
    height = SHEET_CAPTION + SHEET_THUMB + 4
    sheet = Image.new("RGB", (columns * (SHEET_THUMB + 2), len(drawn) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, tiles) in enumerate(drawn):
        # PIL's default font has ASCII only; one_line first, so a name cannot break the line
        draw.text((2, r * height + 2), one_line(caption).encode("ascii", "replace").decode(),
                  fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * (SHEET_THUMB + 2), r * height + SHEET_CAPTION))
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=80, optimize=True)
    return buffer.getvalue()
