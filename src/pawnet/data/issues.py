"""`pawnet data issues`: the photos' own problems, found for the user and never fixed
behind their back: probably wrong labels, near-duplicates (flagged when they straddle
splits, because they leak), and outliers.

Everything works on the frozen EfficientNet-Lite0 features of the photos (cached like
training's). Labels: out-of-fold probabilities of a logistic regression (5 folds), and a
photo is suspect when the probability of its own label is below that class's mean and
another class wins (confident learning, Northcutt et al., 2021), most suspect first.
Near-duplicates: cosine similarity of features at least `NEAR_DUPLICATE`, from one pass
over the similarities, a block of rows at a time, so memory grows linearly with the photos;
every pair is counted, and the `PAIRS_KEPT` most similar are listed (those that straddle
splits first). Outliers: the highest OOD scores, each photo against all the others
(`pawnet.trust.ood.leave_one_out`, blockwise too).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.data.scan import scan
from pawnet.errors import DataError, one_line
from pawnet.run_folder import RunFolder
from pawnet.trust.ood import BLOCK_BYTES, leave_one_out, normalised, row_blocks

NEAR_DUPLICATE = 0.90  # cosine similarity of Lite0 features (docs/decisions.md)
FOLDS = 5
SHOWN = 20  # rows of each table on the terminal
PAIRS_KEPT = 10_000  # near-duplicate pairs listed in the result; all are counted
SHEET_CARDS = 200  # cards per section of the contact sheet; --json has the rest


def _features(photos: list) -> np.ndarray:
    from pawnet.features import FeatureStore, cached_features, frozen_backbone
    from pawnet.models.registry import get_model_spec

    spec = get_model_spec("efficientnet-lite0")
    frozen = frozen_backbone(spec, spec.image_size)
    return cached_features(frozen.runtime, FeatureStore(frozen.key), photos, spec.image_size,
                           32, "Features")


def _label_issues(features: np.ndarray, labels: np.ndarray, classes: list[str],
                  photos: list) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.bincount(labels).min()))
    if folds < 2:
        return []
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=3000))
    probs = cross_val_predict(model, features, labels, method="predict_proba",
                              cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    own = probs[np.arange(len(labels)), labels]
    means = np.array([own[labels == k].mean() for k in range(len(classes))])
    suspect = np.flatnonzero((own < means[labels]) & (probs.argmax(1) != labels))
    return [{"path": photos[i].path, "label": classes[labels[i]],
             "suggested": classes[int(probs[i].argmax())],
             "label_probability": float(own[i])}
            for i in suspect[np.argsort(own[suspect])]]


@dataclass
class Neighbours:
    """What one pass over all similarities finds. `first`, `second`, `similarity`: the
    kept near-duplicate pairs (`first < second`), most similar first."""

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray
    total: int  # near-duplicate pairs found, kept or not
    straddling: int  # of those, pairs whose photos are in different groups


def _merge(kept: tuple[np.ndarray, ...], found: tuple[np.ndarray, ...],
           keep: int) -> tuple[np.ndarray, ...]:
    """Of the pairs (first, second, similarity, across) kept and found, the `keep` to list:
    those across groups first, then the most similar, ties in row order, so the choice
    does not depend on the blocks."""
    first, second, similarity, across = (np.concatenate(p) for p in zip(kept, found,
                                                                        strict=True))
    best = np.lexsort((second, first, -similarity, ~across))[:keep]
    return first[best], second[best], similarity[best], across[best]


def neighbours(unit: np.ndarray, groups: np.ndarray,
               threshold: float = NEAR_DUPLICATE, keep: int = PAIRS_KEPT,
               block_bytes: int = BLOCK_BYTES) -> Neighbours:
    """Near-duplicate pairs of unit vectors, from their cosine similarities computed a
    block of rows at a time.

    Args:
        unit: (n, d) unit-length rows, compared as float32.
        groups: (n,) integer group (split) of each row; a pair straddles when they differ.
        threshold: the similarity a pair needs to count. Defaults to `NEAR_DUPLICATE`.
        keep: the most pairs returned; all are counted. Defaults to `PAIRS_KEPT`.
        block_bytes: the most bytes of similarities held at once (at least two rows).
            Defaults to `BLOCK_BYTES`.

    Returns:
        A `Neighbours`. Memory is O(n d + block_bytes + keep), whatever the pairs.
    """
    unit = np.asarray(unit, np.float32)
    n = len(unit)
    kept = (np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.float32),
            np.empty(0, bool))
    total = straddling = 0
    for start, stop in row_blocks(n, n, block_bytes):
        block = unit[start:stop] @ unit.T
        i, j = np.nonzero(np.triu(block[:, start:] >= threshold, k=1))
        i, j = i + start, j + start
        across = groups[i] != groups[j]
        total, straddling = total + len(i), straddling + int(across.sum())
        if len(i):
            kept = _merge(kept, (i, j, block[i - start, j], across), keep)
    first, second, similarity, _ = kept
    order = np.lexsort((second, first, -similarity))
    return Neighbours(first[order], second[order], similarity[order], total, straddling)


def _near_duplicates(found: Neighbours, photos: list) -> list[dict[str, Any]]:
    return [{"a": photos[i].path, "b": photos[j].path, "similarity": float(s),
             "splits": [photos[i].split, photos[j].split],
             "straddles_splits": photos[i].split != photos[j].split}
            for i, j, s in zip(found.first, found.second, found.similarity, strict=True)]


def _outliers(features: np.ndarray, photos: list, share: float = 0.01
              ) -> list[dict[str, Any]]:
    """The photos least like the others by the OOD score (`pawnet.trust.ood`), each scored
    against all the others."""
    score = leave_one_out(normalised(features - features.mean(axis=0)))
    order = np.argsort(-score)[: max(1, round(share * len(photos)))]
    return [{"path": photos[i].path, "label": photos[i].label, "score": float(score[i])}
            for i in order]


def _photos(folder: Path) -> tuple[list, list[str]]:
    """(photos, classes): a training run's own photos and splits (its manifest), or what a
    scan of a folder of photos finds."""
    from pawnet.data.splits import read_manifest

    run = RunFolder(folder)
    if run.is_run():
        photos = [p for p in read_manifest(run.manifest) if Path(p.path).is_file()]
        return photos, sorted({p.label for p in photos})
    found = scan(folder)
    return found.photos, found.classes


def find_issues(folder: str | Path) -> dict[str, Any]:
    """Suspected label errors, near-duplicate pairs and outliers among the photos of a
    folder (any layout `pawnet train` reads) or of a training run (with its own splits).
    Nothing in the folder is changed.

    Returns:
        A dict: `label_issues`, `outliers`, and `near_duplicates` (at most `PAIRS_KEPT`,
        those across splits first, listed most similar first) with
        `near_duplicates_total`, `near_duplicates_left_out` and `straddling_pairs` counted
        over all pairs.

    Raises:
        DataError: no photos, or fewer than two classes.
    """
    photos, classes = _photos(Path(folder))
    return issues_of(photos, classes, str(folder))


def issues_of(photos: list, classes: list[str], folder: str = "") -> dict[str, Any]:
    """`find_issues` on given photos (with `path`, `label`, `split`, `sha256`): what the
    studio asks for the photos as a person has labelled them so far."""
    if len(classes) < 2 or len(photos) < 4:
        raise DataError(f"{folder} needs photos of at least two classes to look for label "
                        "errors. Try: pawnet data check " + str(folder))
    features = _features(photos)
    unit = normalised(features)
    labels = np.array([classes.index(p.label) for p in photos])
    splits = {split: code for code, split in enumerate(dict.fromkeys(p.split for p in photos))}
    found = neighbours(unit, np.array([splits[p.split] for p in photos]))
    pairs = _near_duplicates(found, photos)
    return {"folder": str(folder), "photos": len(photos), "classes": classes,
            "label_issues": _label_issues(features, labels, classes, photos),
            "near_duplicates": pairs,
            "near_duplicates_total": found.total,
            "near_duplicates_left_out": found.total - len(pairs),
            "straddling_pairs": found.straddling,
            "outliers": _outliers(features, photos)}


def _leaks_first(pairs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` pairs to show: those across splits first, in their listed order."""
    chosen = sorted(range(len(pairs)), key=lambda k: not pairs[k]["straddles_splits"])[:n]
    return [pairs[k] for k in sorted(chosen)]


def format_issues(result: dict[str, Any]) -> str:
    """The findings as text: counts, then the first rows of each table. Names are written
    with `one_line`, so a newline or a terminal escape in a file name cannot forge a row."""
    name = one_line
    lines = [f"{result['photos']} photos in {name(result['folder'])}: "
             f"{len(result['label_issues'])} suspected label errors, "
             f"{result['near_duplicates_total']} near-duplicate pairs "
             f"({result['straddling_pairs']} across splits), "
             f"{len(result['outliers'])} outliers"]
    lines += ["", "suspected label errors (most suspect first): path, label, suggested, "
              "P(label)"]
    lines += [f"  {name(r['path'])}  {name(r['label'])} -> {name(r['suggested'])}  "
              f"{r['label_probability']:.3f}" for r in result["label_issues"][:SHOWN]]
    lines += ["", "near-duplicates: similarity, splits, a, b"]
    lines += [f"  {p['similarity']:.3f}  {name('/'.join(map(str, p['splits'])))}"
              f"{'  (across splits)' if p['straddles_splits'] else ''}  {name(p['a'])}  "
              f"{name(p['b'])}" for p in _leaks_first(result["near_duplicates"], SHOWN)]
    lines += ["", "outliers (least like the others): score, label, path"]
    lines += [f"  {o['score']:.3f}  {name(o['label'])}  {name(o['path'])}"
              for o in result["outliers"][:SHOWN]]
    return "\n".join(lines)


def _thumbnail(path: str) -> str:
    import base64

    from PIL import Image, ImageOps

    from pawnet.data.images import load_pixels

    try:
        image = Image.fromarray(load_pixels(path, 128))
    except Exception:  # a photo that changed since the scan: show its name only
        return ""
    buffer = io.BytesIO()
    ImageOps.contain(image, (128, 128)).save(buffer, "JPEG", quality=85)
    return ('<img alt="" src="data:image/jpeg;base64,'
            + base64.b64encode(buffer.getvalue()).decode() + '">')


def _section(key: str, title: str, cards: list[str], total: int, listed: int) -> str:
    """`listed` of the `total` findings are in the result (--json), `cards` of them here."""
    more = "" if total == len(cards) else (
        f'<p class="more">... and {total - len(cards):,} more, see --json'
        + ("" if listed == total else f" (it lists {listed:,} of the {total:,})") + "</p>")
    return (f'<section id="{key}"><h2>{title} ({total:,})</h2>'
            f'<div class="grid">{"".join(cards)}</div>{more}</section>')


GENERATOR = '<meta name="generator" content="pawnet data issues">'


def is_sheet(head: bytes) -> bool:
    """Whether a file's first bytes are a contact sheet `write_sheet` wrote (or an older
    pawnet's, which had no generator tag)."""
    return GENERATOR.encode() in head or (head.startswith(b'<!doctype html><html lang="en">'
                                                          b'<head><meta charset="utf-8">'
                                                          b"<title>data issues: "))


def write_sheet(result: dict[str, Any], path: Path) -> Path:
    """A self-contained HTML contact sheet: the first `SHEET_CARDS` findings of each kind,
    and how many more there are."""
    from pawnet.storage import atomic_write_text

    thumbnails: dict[str, str] = {}  # a photo in several cards is decoded once

    def card(paths: list[str], caption: str) -> str:
        for p in paths:
            if p not in thumbnails:
                thumbnails[p] = _thumbnail(p)
        names = "<br>".join(html.escape(Path(p).name) for p in paths)
        return (f'<div class="card">{"".join(thumbnails[p] for p in paths)}'
                f"<div>{html.escape(caption)}</div>{names}</div>")

    labels = [card([r["path"]], f"{r['label']} -> {r['suggested']}? P(label) "
                   f"{r['label_probability']:.3f}")
              for r in result["label_issues"][:SHEET_CARDS]]
    pairs = [card([p["a"], p["b"]], f"{p['similarity']:.3f}"
                  + (" across splits" if p["straddles_splits"] else ""))
             for p in _leaks_first(result["near_duplicates"], SHEET_CARDS)]
    odd = [card([o["path"]], f"{o['label']}, score {o['score']:.3f}")
           for o in result["outliers"][:SHEET_CARDS]]
    suspects, outliers = len(result["label_issues"]), len(result["outliers"])
    body = (_section("label-issues", "Suspected label errors", labels, suspects, suspects)
            + _section("near-duplicates", "Near-duplicates", pairs,
                       result["near_duplicates_total"], len(result["near_duplicates"]))
            + _section("outliers", "Outliers", odd, outliers, outliers))
    style = ("body{font:14px system-ui,sans-serif;max-width:1100px;margin:auto;padding:16px}"
             ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));"
             "gap:10px}.card{border:1px solid #dde2ea;border-radius:8px;padding:6px}"
             ".card img{margin-right:4px}")
    folder = html.escape(result["folder"])
    atomic_write_text(path, f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                            f"{GENERATOR}<title>data issues: {folder}</title>"
                            f"<style>{style}</style></head><body><h1>Data issues in "
                            f"{folder}</h1>{body}</body></html>\n")
    return path
