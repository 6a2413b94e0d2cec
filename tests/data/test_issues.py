"""`pawnet data issues`: planted problems in a folder of real photos are found, and the
folder is left as it was; memory and output stay bounded however many near-duplicates
there are, and file names cannot forge terminal rows."""

import hashlib
import io
import json
import shutil
import tracemalloc

import numpy as np
import pytest
from helpers import CVTRICKS, SHARED_DATA, copy_photos, invoke, real_photos
from PIL import Image

import pawnet.data.issues as data_issues
from pawnet.data.issues import find_issues, format_issues, write_sheet
from pawnet.data.scan import Photo


def _tree_hash(folder) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.mark.integration  # Lite0 features of 120 photos
def test_planted_label_error_duplicate_and_outlier_are_found(tmp_path):
    root = tmp_path / "photos"
    for split, offset in (("train", 0), ("val", 30)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for src in real_photos(label, offset + 30)[offset:]:
                shutil.copy(src, root / split / label / src.name)
    wrong = real_photos("dog", 1, "test")[0]
    shutil.copy(wrong, root / "train" / "cat" / "planted-dog.jpg")  # a dog filed as a cat
    original = root / "train" / "cat" / real_photos("cat", 1)[0].name
    copy = io.BytesIO()
    Image.open(original).resize((200, 150)).save(copy, "JPEG", quality=70)
    (root / "val" / "cat" / "resaved.jpg").write_bytes(copy.getvalue())  # leaks into val
    truck = sorted((SHARED_DATA / "ood" / "truck").glob("*.jpg"))[0]
    shutil.copy(truck, root / "train" / "dog" / "truck.jpg")
    before = _tree_hash(root)

    result = find_issues(root)
    suspects = [r["path"] for r in result["label_issues"][:3]]
    assert str(root / "train" / "cat" / "planted-dog.jpg") in suspects
    [leak] = [p for p in result["near_duplicates"] if p["straddles_splits"]]
    assert {leak["a"], leak["b"]} == {str(original), str(root / "val" / "cat" / "resaved.jpg")}
    assert result["straddling_pairs"] == 1
    assert str(root / "train" / "dog" / "truck.jpg") in [o["path"] for o in result["outliers"]]
    assert _tree_hash(root) == before  # nothing in the user's folder changed

    out = tmp_path / "sheet.html"
    ran = invoke("data", "issues", root, "--json", "--out", out)
    assert ran.exit_code == 0, ran.output
    listed = json.loads(ran.stdout)
    assert listed["label_issues"] == result["label_issues"] and listed["sheet"] == str(out)
    page = out.read_text()
    assert page.count("<img") >= 4 and "planted-dog.jpg" in page and "https://" not in page
    text = invoke("data", "issues", root, "--out", out)
    assert "suspected label errors" in text.stdout and "(across splits)" in text.stdout


@pytest.mark.integration
def test_a_runs_own_splits_are_checked_for_leaks(tmp_path):
    import pawnet

    photos = copy_photos(tmp_path / "photos", 12)
    for i, src in enumerate(real_photos("cat", 6)):  # resaved copies: the split scatters them
        copy = io.BytesIO()
        Image.open(src).resize((200, 150)).save(copy, "JPEG", quality=70)
        (photos / "cat" / f"copy{i}.jpg").write_bytes(copy.getvalue())
    run = pawnet.train(photos, out=str(tmp_path / "run"), model="pawnet-cnn", epochs=1,
                       image_size=32)
    result = find_issues(run)
    assert len(result["near_duplicates"]) >= 4 and result["photos"] == 30  # 5 of 6 here
    splits = {p["a"]: p["splits"] for p in result["near_duplicates"]}
    assert result["straddling_pairs"] == sum(a != b for a, b in splits.values()) > 0


def test_one_class_is_a_clear_error(tmp_path):
    (tmp_path / "cat").mkdir()
    for src in real_photos("cat", 4):
        shutil.copy(src, tmp_path / "cat" / src.name)
    result = invoke("data", "issues", tmp_path)
    assert result.exit_code == 2 and "at least two classes" in result.output


def _resaved(src, dest) -> None:
    copy = io.BytesIO()
    Image.open(src).resize((200, 150)).save(copy, "JPEG", quality=70)
    dest.write_bytes(copy.getvalue())


def _planted(monkeypatch, features: np.ndarray, photos: list, label_issues: bool = True):
    """`find_issues` on these features and photos, without scanning or a backbone."""
    classes = sorted({p.label for p in photos})
    monkeypatch.setattr(data_issues, "_photos", lambda folder: (photos, classes))
    monkeypatch.setattr(data_issues, "_features", lambda found: features)
    if not label_issues:
        monkeypatch.setattr(data_issues, "_label_issues", lambda *args: [])


def _brute_force(features: np.ndarray, photos: list) -> tuple[list, list]:
    """Near-duplicate pairs and outliers from the whole similarity matrices at once."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    first, second = np.nonzero(np.triu(similarity >= data_issues.NEAR_DUPLICATE, k=1))
    pairs = sorted(((float(similarity[i, j]), i, j) for i, j in zip(first, second, strict=True)),
                   key=lambda p: -p[0])
    centred = features - features.mean(axis=0)  # outliers: the OOD score, centred features
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    others = centred @ centred.T
    np.fill_diagonal(others, -1.0)
    score = 1.0 - np.sort(others, axis=1)[:, -5]
    order = np.argsort(-score)[: max(1, round(0.01 * len(photos)))]
    return ([(photos[i].path, photos[j].path, s) for s, i, j in pairs],
            [(photos[i].path, float(score[i])) for i in order])


def _random_photos(n: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """n 32-d feature rows, a tenth of them noisy copies of others."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 32)).astype(np.float32)
    copies = rng.choice(n, n // 10, replace=False)
    features[copies] = (features[rng.integers(0, n, n // 10)]
                        + 0.3 * rng.normal(size=(n // 10, 32)).astype(np.float32))
    photos = [Photo(f"/photos/{i}.jpg", "cat" if i % 2 else "dog", ("train", "val")[i % 3 == 0],
                    str(i)) for i in range(n)]
    return features, photos


def test_neighbours_use_memory_linear_in_photos_and_match_brute_force(monkeypatch):
    n = 20_000
    features, photos = _random_photos(n, seed=1)
    _planted(monkeypatch, features, photos, label_issues=False)
    tracemalloc.start()
    try:
        result = find_issues("planted")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 8, f"{peak / 2**20:.0f} MB"  # the whole matrix is 1.6 GB
    assert len(result["near_duplicates"]) > 1_000 and len(result["outliers"]) == 200

    features, photos = _random_photos(1_500)
    _planted(monkeypatch, features, photos, label_issues=False)
    result = find_issues("planted")
    pairs, outliers = _brute_force(features, photos)
    assert len(pairs) > 50
    assert [(p["a"], p["b"], p["similarity"]) for p in result["near_duplicates"]] == pairs
    assert [(o["path"], o["score"]) for o in result["outliers"]] == outliers
    assert result["straddling_pairs"] == sum(p["straddles_splits"]
                                             for p in result["near_duplicates"]) > 0


def test_a_thousand_near_identical_photos_are_counted_all_but_listed_capped(monkeypatch,
                                                                           tmp_path):
    paths = real_photos("cat", 500) + real_photos("dog", 500)
    photos = [Photo(str(p), p.parent.name, "val" if i < 3 else "train", str(i))
              for i, p in enumerate(paths)]
    rng = np.random.default_rng(0)
    frames = rng.normal(size=64) + 0.05 * rng.normal(size=(1_000, 64))  # one scene, filmed
    _planted(monkeypatch, frames.astype(np.float32), photos)

    result = find_issues(CVTRICKS / "train")
    kept, total, leaks = result["near_duplicates"], 1_000 * 999 // 2, 3 * 997
    assert result["near_duplicates_total"] == total and len(kept) == data_issues.PAIRS_KEPT
    assert result["near_duplicates_left_out"] == total - data_issues.PAIRS_KEPT
    assert result["straddling_pairs"] == leaks
    assert sum(p["straddles_splits"] for p in kept) == leaks  # leaks are never left out
    similarities = [p["similarity"] for p in kept]
    assert similarities == sorted(similarities, reverse=True)
    in_val = {str(p) for p in paths[:3]}
    same_split = [s for a, b, s in _brute_force(frames.astype(np.float32), photos)[0]
                  if a not in in_val and b not in in_val]
    assert [p["similarity"] for p in kept if not p["straddles_splits"]] == same_split[
        :data_issues.PAIRS_KEPT - leaks]  # then the most similar
    text = format_issues(result)
    assert f"{total} near-duplicate pairs ({leaks} across splits)" in text
    assert text.count("(across splits)") == data_issues.SHOWN

    sheet = write_sheet(result, tmp_path / "sheet.html").read_text()
    assert len(sheet.encode()) < 5 * 2**20
    section = sheet.split('id="near-duplicates"')[1].split("</section>")[0]
    assert section.count('class="card"') == section.count("across splits") == \
        data_issues.SHEET_CARDS
    assert f"and {total - data_issues.SHEET_CARDS:,} more, see --json" in section


@pytest.mark.integration  # Lite0 features of real photos
def test_a_file_name_cannot_forge_a_terminal_row(tmp_path):
    root = copy_photos(tmp_path / "odd\nfolder\x1b[2J", 6)
    odd = "new\nline\x1b[31m.jpg"
    _resaved(real_photos("cat", 1)[0], root / "cat" / odd)

    result = find_issues(root)
    assert str(root / "cat" / odd) in {p["b"] for p in result["near_duplicates"]} | {
        p["a"] for p in result["near_duplicates"]}
    text = format_issues(result)
    assert "\x1b" not in text and "new\\nline\\x1b[31m.jpg" in text
    assert "odd\\nfolder\\x1b[2J" in text.splitlines()[0]
    rows = sum(min(data_issues.SHOWN, len(result[key]))
               for key in ("label_issues", "near_duplicates", "outliers"))
    assert len(text.splitlines()) == 1 + 3 * 2 + rows  # no row split in two
