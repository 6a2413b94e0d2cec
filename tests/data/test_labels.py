import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pawnet.data.labels import (
    EXCLUDE,
    Decision,
    LabelsFile,
    read_labels,
    relative_path,
    resolve,
    write_labels,
)
from pawnet.errors import DataError

HEADER = "path,label,time\n"


def test_written_decisions_read_back_in_order(tmp_path):
    decisions = {d.path: d for d in (
        Decision("cat/cat.12.jpg", "dog", "2026-12-03T21:50:01Z"),
        Decision("dog/a, \"quoted\" name.jpg", EXCLUDE, "2026-12-03T21:50:04Z"),
        Decision("../inbox/new.jpg", "cat", "2026-12-03T21:50:09Z"),
    )}
    write_labels(tmp_path / "labels.csv", decisions)
    assert (tmp_path / "labels.csv").read_text().startswith(HEADER)
    read = read_labels(tmp_path / "labels.csv")
    assert read == decisions and list(read) == list(decisions)


def test_a_later_line_for_a_photo_wins(tmp_path):
    (tmp_path / "labels.csv").write_text(
        HEADER + "cat/1.jpg,dog,t1\ndog/2.jpg,exclude,t2\n./cat/1.jpg,cat,t3\n\n")
    read = read_labels(tmp_path / "labels.csv")
    assert read == {"dog/2.jpg": Decision("dog/2.jpg", EXCLUDE, "t2"),
                    "cat/1.jpg": Decision("cat/1.jpg", "cat", "t3")}


def test_undo_takes_changes_back_in_reverse_order_and_clear_forgets(tmp_path):
    file = tmp_path / "labels.csv"
    labels = LabelsFile(file)
    assert labels.decisions == {} and not file.exists() and labels.undo() is None
    labels.decide("cat/1.jpg", "dog")
    labels.decide("cat/2.jpg", EXCLUDE)
    labels.decide("cat/1.jpg", "cat")
    assert {p: d.label for p, d in read_labels(file).items()} == {"cat/2.jpg": EXCLUDE,
                                                                  "cat/1.jpg": "cat"}
    assert labels.undo() == "cat/1.jpg"
    assert read_labels(file)["cat/1.jpg"].label == "dog"
    labels.clear("cat/2.jpg")
    labels.clear("cat/never-decided.jpg")  # nothing to forget, nothing to undo
    assert list(read_labels(file)) == ["cat/1.jpg"] == list(labels.decisions)
    assert labels.undo() == "cat/2.jpg"
    assert read_labels(file)["cat/2.jpg"].label == EXCLUDE
    assert LabelsFile(file).decisions == labels.decisions  # a new session loads the file
    assert [labels.undo(), labels.undo(), labels.undo()] == ["cat/2.jpg", "cat/1.jpg", None]
    assert read_labels(file) == {}


def test_names_a_folder_may_hold_are_read_back_as_written(tmp_path):
    odd = ["cat/a\\b.jpg", "12:30.jpg", " cat/lead.jpg", "a:b/c.jpg"]  # legal on POSIX
    labels = LabelsFile(tmp_path / "labels.csv")
    labels.decide(odd, "dog")
    assert list(read_labels(labels.file)) == odd


@pytest.mark.parametrize(("text", "message"), [
    ("file,label,when\ncat/1.jpg,dog,t\n", "does not start with the header path,label,time"),
    ("", "does not start with the header"),
    (HEADER + "cat/1.jpg,dog\n", "line 2: 2 fields, not 3"),
    (HEADER + "cat/1.jpg,dog,t\ncat/2.jpg,dog,t,extra\n", "line 3: 4 fields, not 3"),
    (HEADER + "/home/me/cat/1.jpg,dog,t\n", "line 2: path '/home/me/cat/1.jpg' is not relative"),
    (HEADER + "C:/photos/1.jpg,dog,t\n", "is not relative"),
    (HEADER + "cat/1.jpg, ,t\n", "line 2: no label"),
    (HEADER + 'cat/1.jpg,"dog\n', "is not CSV|fields"),
])
def test_a_bad_labels_file_is_one_line_naming_the_fix(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message) as caught:
        read_labels(tmp_path / "labels.csv")
    assert "\n" not in str(caught.value)
    assert "labels.csv" in str(caught.value)


def test_a_missing_labels_file_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"labels file not found: .*Try: pawnet studio"):
        read_labels(tmp_path / "none.csv")


def test_paths_are_relative_to_the_photos_and_may_lead_out_of_them(tmp_path):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (tmp_path / "inbox").mkdir()
    assert relative_path(root / "cat" / "1.jpg", root) == "cat/1.jpg"
    assert relative_path(tmp_path / "inbox" / "a.jpg", root) == "../inbox/a.jpg"
    assert relative_path(tmp_path / "inbox" / "a.jpg", root / "cat" / "..") == "../inbox/a.jpg"
    assert resolve("../inbox/a.jpg", root) == tmp_path.resolve() / "inbox" / "a.jpg"
    assert resolve("cat/../cat/1.jpg", root) == root.resolve() / "cat" / "1.jpg"
    for photo in (root / "cat" / "1.jpg", tmp_path / "inbox" / "a.jpg"):
        assert resolve(relative_path(photo, root), root) == photo.resolve()


_DECIDING = """
import sys
from pawnet.data.labels import EXCLUDE, LabelsFile

labels = LabelsFile(sys.argv[1])
print("ready", flush=True)
for n in range(len(labels.decisions), 1_000_000):
    labels.decide(f"cat/{n}.jpg", EXCLUDE if n % 3 == 0 else "dog")
"""


@pytest.mark.integration  # starts processes
def test_a_kill_while_deciding_leaves_a_file_that_loads(tmp_path):
    file = tmp_path / "labels.csv"
    rng = random.Random(0)
    counts = []
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", _DECIDING, str(file)],
                                stdout=subprocess.PIPE, env={**os.environ})
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        decisions = read_labels(file) if file.exists() else {}
        assert list(decisions) == [f"cat/{n}.jpg" for n in range(len(decisions))]  # a prefix
        assert all(d.label == (EXCLUDE if n % 3 == 0 else "dog")
                   for n, d in enumerate(decisions.values()))
        counts.append(len(decisions))
    assert counts == sorted(counts) and counts[-1] > 20
