"""`pawnet data issues`: planted problems in a folder of real photos are found, and the
folder is left as it was."""

import hashlib
import io
import json
import shutil

from conftest import SHARED_DATA, invoke, real_photos
from PIL import Image

from pawnet.data_issues import find_issues


def _tree_hash(folder) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


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


def test_a_runs_own_splits_are_checked_for_leaks(tmp_path):
    import pawnet

    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for src in real_photos(label, 12):
            shutil.copy(src, photos / label / src.name)
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
