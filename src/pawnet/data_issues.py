"""`pawnet data issues`: the photos' own problems, found for the user and never fixed
behind their back: probably wrong labels, near-duplicates (flagged when they straddle
splits, because they leak), and outliers.

Everything works on the frozen EfficientNet-Lite0 features of the photos (cached like
training's). Labels: out-of-fold probabilities of a logistic regression (5 folds), and a
photo is suspect when the probability of its own label is below that class's mean and
another class wins (confident learning, Northcutt et al., 2021), most suspect first.
Near-duplicates: cosine similarity of features at least `NEAR_DUPLICATE`. Outliers: the
largest distance to the 5th nearest other photo (as the OOD score).
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.data.scan import scan
from pawnet.errors import DataError

NEAR_DUPLICATE = 0.90  # cosine similarity of Lite0 features (docs/decisions.md)
FOLDS = 5
SHOWN = 20  # rows of each table on the terminal; --json and the contact sheet have all


def _features(photos: list) -> np.ndarray:
    from pawnet.models.pretrained import load_backbone
    from pawnet.models.registry import get_model_spec
    from pawnet.training.transfer import (
        FeatureStore,
        backbone_id,
        backbone_runtime,
        cached_features,
    )

    spec = get_model_spec("efficientnet-lite0")
    backbone = load_backbone(spec, spec.image_size)
    key = backbone_id(backbone, "lite0", spec.image_size)
    return cached_features(backbone_runtime(backbone, key), FeatureStore(key), photos,
                           spec.image_size, 32, "Features")


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


def _near_duplicates(unit: np.ndarray, photos: list) -> list[dict[str, Any]]:
    similarity = unit @ unit.T
    first, second = np.nonzero(np.triu(similarity >= NEAR_DUPLICATE, k=1))
    pairs = [{"a": photos[i].path, "b": photos[j].path, "similarity": float(similarity[i, j]),
              "splits": [photos[i].split, photos[j].split],
              "straddles_splits": photos[i].split != photos[j].split}
             for i, j in zip(first, second, strict=True)]
    return sorted(pairs, key=lambda p: -p["similarity"])


def _outliers(unit: np.ndarray, photos: list, share: float = 0.01) -> list[dict[str, Any]]:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1.0)
    k = min(5, len(photos) - 1)
    score = 1.0 - np.sort(similarity, axis=1)[:, -k]
    order = np.argsort(-score)[: max(1, round(share * len(photos)))]
    return [{"path": photos[i].path, "label": photos[i].label, "score": float(score[i])}
            for i in order]


def _photos(folder: Path) -> tuple[list, list[str]]:
    """(photos, classes): a training run's own photos and splits (its manifest), or what a
    scan of a folder of photos finds."""
    from pawnet.data.splits import read_manifest
    from pawnet.runs import is_run

    if is_run(folder):
        photos = [p for p in read_manifest(folder / "manifest.csv") if Path(p.path).is_file()]
        return photos, sorted({p.label for p in photos})
    found = scan(folder)
    return found.photos, found.classes


def find_issues(folder: str | Path) -> dict[str, Any]:
    """Suspected label errors, near-duplicate pairs and outliers among the photos of a
    folder (any layout `pawnet train` reads) or of a training run (with its own splits).
    Nothing in the folder is changed.

    Raises:
        DataError: no photos, or fewer than two classes.
    """
    photos, classes = _photos(Path(folder))
    if len(classes) < 2 or len(photos) < 4:
        raise DataError(f"{folder} needs photos of at least two classes to look for label "
                        "errors. Try: pawnet data check " + str(folder))
    features = _features(photos)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    labels = np.array([classes.index(p.label) for p in photos])
    pairs = _near_duplicates(unit, photos)
    return {"folder": str(folder), "photos": len(photos), "classes": classes,
            "label_issues": _label_issues(features, labels, classes, photos),
            "near_duplicates": pairs,
            "straddling_pairs": sum(p["straddles_splits"] for p in pairs),
            "outliers": _outliers(unit, photos)}


def format_issues(result: dict[str, Any]) -> str:
    """The findings as text: counts, then the first rows of each table."""
    lines = [f"{result['photos']} photos in {result['folder']}: "
             f"{len(result['label_issues'])} suspected label errors, "
             f"{len(result['near_duplicates'])} near-duplicate pairs "
             f"({result['straddling_pairs']} across splits), "
             f"{len(result['outliers'])} outliers"]
    lines += ["", "suspected label errors (most suspect first): path, label, suggested, "
              "P(label)"]
    lines += [f"  {r['path']}  {r['label']} -> {r['suggested']}  {r['label_probability']:.3f}"
              for r in result["label_issues"][:SHOWN]]
    lines += ["", "near-duplicates: similarity, splits, a, b"]
    lines += [f"  {p['similarity']:.3f}  {'/'.join(map(str, p['splits']))}"
              f"{'  (across splits)' if p['straddles_splits'] else ''}  {p['a']}  {p['b']}"
              for p in result["near_duplicates"][:SHOWN]]
    lines += ["", "outliers (least like the others): score, label, path"]
    lines += [f"  {o['score']:.3f}  {o['label']}  {o['path']}"
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


def write_sheet(result: dict[str, Any], path: Path) -> Path:
    """A self-contained HTML contact sheet of every finding."""
    from pawnet.storage import atomic_write_text

    def card(paths: list[str], caption: str) -> str:
        pictures = "".join(_thumbnail(p) for p in paths)
        names = "<br>".join(html.escape(Path(p).name) for p in paths)
        return f'<div class="card">{pictures}<div>{html.escape(caption)}</div>{names}</div>'

    labels = [card([r["path"]], f"{r['label']} -> {r['suggested']}? P(label) "
                   f"{r['label_probability']:.3f}") for r in result["label_issues"]]
    pairs = [card([p["a"], p["b"]], f"{p['similarity']:.3f}"
                  + (" across splits" if p["straddles_splits"] else ""))
             for p in result["near_duplicates"]]
    odd = [card([o["path"]], f"{o['label']}, score {o['score']:.3f}") for o in result["outliers"]]
    sections = [("label-issues", "Suspected label errors", labels),
                ("near-duplicates", "Near-duplicates", pairs), ("outliers", "Outliers", odd)]
    body = "".join(f'<section id="{key}"><h2>{title} ({len(cards)})</h2>'
                   f'<div class="grid">{"".join(cards)}</div></section>'
                   for key, title, cards in sections)
    style = ("body{font:14px system-ui,sans-serif;max-width:1100px;margin:auto;padding:16px}"
             ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));"
             "gap:10px}.card{border:1px solid #dde2ea;border-radius:8px;padding:6px}"
             ".card img{margin-right:4px}")
    atomic_write_text(path, f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                            f"<title>data issues: {html.escape(result['folder'])}</title>"
                            f"<style>{style}</style></head><body><h1>Data issues in "
                            f"{html.escape(result['folder'])}</h1>{body}</body></html>\n")
    return path
