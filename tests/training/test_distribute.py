"""Training on tf.distribute: two worker processes on loopback, and MirroredStrategy on two
logical CPU devices, against a single-process run of the same global batch."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import copy_photos, free_ports, invoke

import pawnet
from pawnet.distribute import Cluster, connect, local, split_batch, tf_config
from pawnet.errors import ConfigError

# Full-batch steps (the batch holds every training photo), no augmentation, no dropout and
# no batch norm: one process and two workers then compute the same gradients, and may
# differ only by the order of float sums.
SAME_STEPS = {"model": "tutorial-d-conv16", "image_size": 32, "augment": "none",
              "batch_size": 32, "epochs": 4, "lr": 0.003, "lr_schedule": "constant"}
WORKER_TIMEOUT_S = 300


def _toy_photos(root: Path) -> Path:
    copy_photos(root / "train", 16)  # 32 photos: one full batch, 16 per worker
    copy_photos(root / "validation", 6, offset=16)
    copy_photos(root / "test", 6, split="test")
    return root


def _flags(settings: dict) -> list[str]:
    return [str(a) for k, v in settings.items() for a in ("--" + k.replace("_", "-"), v)]


def start_workers(args: list[str], tmp_path: Path, n: int = 2, extra: dict | None = None,
                  only: int | None = None):
    """`pawnet train ARGS` as `n` workers on loopback (or only worker `only` of them);
    worker i also gets `extra[i]`'s arguments. Each has its own temporary folder, to show
    where it wrote."""
    workers = ",".join(f"127.0.0.1:{p}" for p in free_ports(n))
    procs = []
    for i in range(n) if only is None else [only]:
        temp = tmp_path / f"tmp{i}"
        temp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, "-m", "pawnet.cli", "train", *args, *(extra or {}).get(i, []),
               "--workers", workers, "--worker-index", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs, timeout: float = WORKER_TIMEOUT_S) -> list[tuple[int, str]]:
    """Wait for every worker, killing them all past `timeout`; their (code, output)."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _digest(output: str) -> str:
    found = re.findall(r"weights after training: sha256 (\w+)", output)
    assert len(found) == 1, output
    return found[0]


def _labels(run: Path, photos: Path) -> tuple[list[str], np.ndarray]:
    predictions = pawnet.load(run).predict(sorted(str(p) for p in photos.rglob("*.jpg")))
    return ([p.top_class for p in predictions],
            np.array([list(p.probabilities.values()) for p in predictions]))


@pytest.mark.integration
def test_two_workers_train_like_one_process_of_the_same_global_batch(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    run = tmp_path / "run"
    results = finish(start_workers([str(photos), "--out", str(run), *_flags(SAME_STEPS)],
                                   tmp_path))
    for code, output in results:
        assert code == 0, output[-3000:]
    (_, chief), (_, worker) = results
    assert "multi-worker strategy: worker 0 of 2, 2 replicas in sync" in chief
    assert _digest(chief) == _digest(worker)  # the workers end with identical weights
    assert "the chief (worker 0) wrote the run folder" in worker
    assert not any((tmp_path / "tmp1").iterdir())  # worker 1 left nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "run", "tmp0", "tmp1"]

    single = pawnet.train(photos, out=str(tmp_path / "single"), strategy="one", **SAME_STEPS)
    _compare(run, single, photos / "test", ("loss", "accuracy", "val_loss", "val_accuracy"))


def _compare(run: Path, single: Path, test_photos: Path, keys: tuple[str, ...]) -> None:
    """The run's history and test-photo predictions against the single-process run's."""
    history, single_history = _history(run), _history(single)
    assert len(history) == len(single_history)
    gaps = {k: max(abs(a[k] - b[k]) for a, b in zip(history, single_history, strict=True))
            for k in keys}
    labels, probabilities = _labels(run, test_photos)
    single_labels, single_probabilities = _labels(single, test_photos)
    gap = float(np.abs(probabilities - single_probabilities).max())
    print(f"largest gap to one process: {gaps}; test probabilities {gap:.2g}; "
          f"labels {labels.count('cat')} cat, {labels.count('dog')} dog")
    assert all(g < 1e-4 for g in gaps.values()), gaps
    assert labels == single_labels
    assert gap < 1e-4


@pytest.mark.integration
def test_a_transfer_model_from_two_workers_predicts_like_one_from_one_process(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    settings = {"model": "efficientnet-lite0", "image_size": 96, "epochs": 5, "batch_size": 16}
    results = finish(start_workers([str(photos), "--out", str(tmp_path / "run"),
                                    *_flags(settings)], tmp_path))
    for code, output in results:
        assert code == 0, output[-3000:]
    single = pawnet.train(photos, out=str(tmp_path / "single"), strategy="one", **settings)
    _compare(tmp_path / "run", single, photos / "test", ("loss", "val_loss", "val_accuracy"))


@pytest.mark.integration
def test_workers_with_different_photos_stop_before_training(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    other = _toy_photos(tmp_path / "other")
    next((other / "train" / "cat").iterdir()).unlink()
    settings = _flags({**SAME_STEPS, "epochs": 1})
    procs = start_workers(["--out", str(tmp_path / "run"), *settings], tmp_path,
                          extra={0: [str(photos)], 1: [str(other)]})
    for code, output in finish(procs):
        assert code == 2
        assert "error: the workers' photos differ" in output
        assert "Epoch" not in output
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_a_killed_worker_stops_the_other_with_a_clear_error_then_resume_finishes(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    run = tmp_path / "run"
    # pawnet-cnn: batch norm (synchronized over the replicas) and dropout
    settings = {"model": "pawnet-cnn", "image_size": 32, "batch_size": 4, "epochs": 40,
                "patience": 40}
    procs = start_workers([str(photos), "--out", str(run), *_flags(settings)], tmp_path)
    state = run / "checkpoints" / "state.json"
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline and procs[0].poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # into the next epoch
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    (code, output), _ = finish(procs, timeout=120)
    seconds = time.monotonic() - killed
    print(f"worker 0 stopped {seconds:.1f}s after worker 1 was killed")
    assert code == 2, output[-3000:]
    # TensorFlow reports a lost peer two ways: missed heartbeats, or a collective cut off
    found = re.search(r"error: worker 0 of 2 lost contact with the others \((.+)\)\. Try: "
                      r".*--resume", output)
    assert found, output[-3000:]
    assert 'File "' not in found[1] and "most recent call" not in found[1], found[1]
    assert "heartbeats" not in found[1] or found[1] == "worker task 1 stopped sending heartbeats"
    assert seconds < 60
    done = json.loads(state.read_text())["epoch"]
    assert not (run / "bundle").exists()

    resumed = finish(start_workers(["--resume", str(run), "--epochs", str(done + 1)],
                                   tmp_path))
    for code, output in resumed:
        assert code == 0, output[-3000:]
    assert f"after epoch {done} of {done + 1}" in resumed[0][1]
    assert _digest(resumed[0][1]) == _digest(resumed[1][1])
    assert [int(r["epoch"]) for r in _history(run)] == list(range(1, done + 2))
    assert (run / "bundle" / "model.keras").exists()


@pytest.mark.integration
def test_a_worker_whose_peers_never_start_gives_up_after_the_startup_timeout(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    # worker 0, which leads the meeting, and worker 1, which joins it, each alone
    lone = [*start_workers([str(photos), "--out", str(tmp_path / "run0"), "--startup-timeout",
                            "3"], tmp_path, only=0),
            *start_workers([str(photos), "--out", str(tmp_path / "run1"), "--startup-timeout",
                            "3"], tmp_path, only=1)]
    for index, (code, output) in enumerate(finish(lone, timeout=120)):
        assert code == 2, output[-3000:]
        assert (f"error: worker {index} of 2 gave up after 3 s: not every worker started. "
                "Try: start every worker with the same --workers") in output
        assert not (tmp_path / f"run{index}").exists()


def _listening(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses where something listens on TCP `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # in 32-bit words of host byte order
                words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
                if sys.byteorder == "little":
                    words = [w[::-1] for w in words]
                found.append(ipaddress.ip_address(b"".join(words)))
    return found


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net")
@pytest.mark.integration
def test_a_worker_listens_on_loopback_only_or_warns_that_its_port_is_open(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    (proc,) = start_workers([str(photos), "--out", str(tmp_path / "run"), "--startup-timeout",
                             "3"], tmp_path, only=0)
    port = int(proc.args[proc.args.index("--workers") + 1].split(",")[0].rpartition(":")[2])
    addresses, deadline = [], time.monotonic() + WORKER_TIMEOUT_S
    while not addresses and proc.poll() is None and time.monotonic() < deadline:
        addresses = _listening(port)  # while it waits for worker 1, which never starts
        time.sleep(0.1)
    ((code, output),) = finish([proc], timeout=120)
    print(f"worker 0 of 2 on 127.0.0.1:{port} listened on {[str(a) for a in addresses]}")
    assert addresses and code == 2, output[-3000:]
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    if not all(_loopback(a) for a in addresses):
        opened = [w for w in warnings if f"port {port} of every network interface" in w]
        assert len(opened) == 1, output[-3000:]
        assert "no authentication" in opened[0] and "firewall" in opened[0]


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import pawnet
pawnet.train(sys.argv[1], out=sys.argv[2], strategy="mirrored", **eval(sys.argv[3]))
"""


@pytest.mark.integration
def test_mirrored_strategy_on_two_logical_cpus_trains_like_one_device(tmp_path):
    photos = _toy_photos(tmp_path / "photos")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(photos), str(run),
                           repr(SAME_STEPS)], capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mirrored strategy: 2 replicas in sync" in done.stdout
    single = pawnet.train(photos, out=str(tmp_path / "single"), strategy="one", **SAME_STEPS)
    _compare(run, single, photos / "test", ("loss", "accuracy", "val_loss", "val_accuracy"))


def test_tf_config_is_written_from_the_workers_and_checked():
    assert tf_config("a:1,b:2", 1) == {"cluster": {"worker": ["a:1", "b:2"]},
                                        "task": {"type": "worker", "index": 1}}
    for workers, index, message in [("a:1,b:2", 2, "between 0 and 1"),
                                    ("a,b:2", 0, "HOST:PORT"), ("a:1,a:1", 0, "more than once"),
                                    ("a:99999", 0, "HOST:PORT"), ("a:\u00b2", 0, "HOST:PORT"),
                                    ("a\nb:1", 0, "HOST:PORT")]:
        with pytest.raises(ConfigError, match=message):
            tf_config(workers, index)


def test_bad_strategy_settings_are_one_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="go together"):
        connect("auto", "a:1,b:2", None)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        connect("multi-worker")
    with pytest.raises(ConfigError, match="--strategy multi-worker"):
        connect("mirrored", "a:1,b:2", 0)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON"):
        connect("multi-worker")
    monkeypatch.delenv("TF_CONFIG")
    assert connect("auto").kind == "one"  # no TF_CONFIG, no GPUs
    assert connect("auto", "127.0.0.1:1", 0).kind == "one"  # a cluster of one worker
    assert "TF_CONFIG" not in os.environ  # --workers is handed to TensorFlow, not written
    assert split_batch(32, local()) == 32
    four = Cluster(SimpleNamespace(num_replicas_in_sync=4), "multi-worker", 0, 4)
    assert split_batch(32, four) == 8
    with pytest.raises(ConfigError, match=r"not split evenly over 4 replicas.*--batch-size 28"):
        split_batch(30, four)


@pytest.mark.parametrize(("text", "message"), [
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     'job "worker" must be a list of HOST:PORT strings, received: "localhost:1". Try: '),
    ('{"cluster": {"worker": [1, 2]}, "task": {"type": "worker", "index": 0}}',
     'job "worker" must be a list of HOST:PORT strings, received: [1, 2]'),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     'received: ["a:1", "b"]'),
    ('{"cluster": {"worker": {"0": "a:1"}}, "task": {"type": "worker", "index": 0}}',
     'job "worker" must be a list'),
    ('{"cluster": {"worker": ["a:1", "b:2"], "ps": [3]}, "task": {"type": "worker", "index": 0}}',
     'job "ps" must be a list of HOST:PORT strings, received: [3]'),
    ('{"cluster": {"chief": ["a:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
     "lists an address more than once: a:1. Try: "),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index must be between 0 and 1 for its 2 worker tasks, received: 2. Try: "),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
     'job "worker" lists no tasks'),
    ('{"cluster": [["a:1", "b:2"]], "task": {"type": 0, "index": 0}}', "must be JSON like"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": Infinity}}',
     "must be JSON like"),
])
def test_a_tf_config_whose_tasks_are_not_host_port_lists_is_one_clear_error(monkeypatch, text,
                                                                           message):
    monkeypatch.setenv("TF_CONFIG", text)
    for strategy in ("auto", "multi-worker"):
        with pytest.raises(ConfigError, match=re.escape(message)):
            connect(strategy, startup_timeout=1)


def test_a_tf_config_with_a_string_for_its_workers_stops_the_cli_with_one_error(monkeypatch,
                                                                               tmp_path):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": "localhost:1"}, "task": '
                                    '{"type": "worker", "index": 0}}')
    result = invoke("train", copy_photos(tmp_path / "photos", 2), "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        'error: TF_CONFIG\'s job "worker" must be a list of HOST:PORT strings, received: '
        '"localhost:1". Try: "cluster": {"worker": ["node1:12345", "node2:12345"]}, or '
        "--workers node1:12345,node2:12345 --worker-index I"]
    assert not (tmp_path / "run").exists()
