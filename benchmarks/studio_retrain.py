"""Retraining from the studio's page: seconds from the click to the new figures.

Trains the default model on PHOTOS once (features cached by that run, as they are after
any first training), opens `pawnet studio PHOTOS --run RUN` on a loopback port, relabels
two photos and excludes one through the API as the page does, then asks for a retrain
and polls `/api/state` (as the page does, here every 50 ms) until the new run's figures
are there. Repeats --repeats times, each time with one more decision, and prints each time
and the figures before and after. Target: <= 5 s on cvtricks.

    .venv/bin/python benchmarks/studio_retrain.py ../shared/data/cvtricks
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _serve(studio) -> tuple[str, object]:
    import uvicorn
    from scale_workers import free_ports

    from pawnet.studio.app import create_app

    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def _retrain(url: str, before: list[str] | None) -> tuple[float, dict]:
    started = time.monotonic()
    _post(url + "/api/retrain", {})
    while True:
        state = _get(url + "/api/state")
        done = state["retrained"]
        if done and done["runs"] != before:
            return time.monotonic() - started, done
        if state["jobs"]["retrain"]["state"] == "failed":
            raise SystemExit(f"retraining failed: {state['jobs']['retrain']['error']}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="folder for runs and labels")
    args = parser.parse_args()
    import pawnet
    from pawnet.studio.app import open_studio

    work = args.work or Path(tempfile.mkdtemp(prefix="pawnet-studio-retrain-"))
    run = pawnet.train(args.photos, out=str(work / "runs" / "train"), verbose=False)
    studio = open_studio(args.photos, run, work / "labels.csv")
    url, server = _serve(studio)
    studio.jobs.start()
    try:
        items = _get(url + "/api/photos?split=train&limit=50")["items"]
        classes = studio.catalog.classes
        other = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
        for item, label in zip(items, [None, None, "exclude"], strict=False):
            _post(url + f"/api/photos/{item['id']}/label",
                  {"label": label or other[item["label"]]})
        before = None
        for n in range(args.repeats):
            seconds, result = _retrain(url, before)
            before = result["runs"]
            metrics = result["metrics"]
            shown = ", ".join(f"{k} {a:.4f} -> {b:.4f}" for k, (a, b) in metrics.items()
                              if k in ("val_accuracy", "val_loss"))
            print(f"retrain {n + 1}: {seconds:.2f} s from click to figures (training "
                  f"{result['seconds']:.2f} s); {shown}")
            item = items[3 + n]
            _post(url + f"/api/photos/{item['id']}/label", {"label": "exclude"})
    finally:
        server.should_exit = True
        studio.jobs.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"runs in {work}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
