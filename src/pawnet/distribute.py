"""Training on several devices or machines, on `tf.distribute`.

`--strategy one` trains in this process on one device; `mirrored` on every GPU of this
machine (or every logical CPU device); `multi-worker` on several machines with
`MultiWorkerMirroredStrategy`, from the `TF_CONFIG` that cluster schedulers set or from
`--workers HOST:PORT,... --worker-index I`. `auto` takes multi-worker when `TF_CONFIG` names
more than one task, mirrored with more than one GPU, else one.

All the workers run the same command; the chief (task 0) writes the run folder. Everything
that crosses machines is a `tf.distribute` collective: the check that every worker has the
same photos and settings, the gradients, the validation figures, the transfer features.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.errors import ClusterError, ConfigError, one_line

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "one", "mirrored", "multi-worker")
STARTUP_TIMEOUT_S = 600  # how long workers wait for each other to start, by default


@dataclass(frozen=True)
class Cluster:
    """Where a run trains: its `tf.distribute` strategy, and this worker's place."""

    strategy: Any
    kind: str = "one"
    index: int = 0
    workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi-worker"

    def shard(self, items: Sequence) -> list:
        """This worker's share of `items`: every `workers`-th, from its index."""
        return list(items[self.index::self.workers])

    def scope(self):
        return self.strategy.scope()

    def describe(self) -> str:
        replicas = self.strategy.num_replicas_in_sync
        where = f"worker {self.index} of {self.workers}, " if self.multi_worker else ""
        return f"{self.kind} strategy: {where}{replicas} replica{'s' * (replicas > 1)} in sync"


def local() -> Cluster:
    """One device, in this process: TensorFlow's default strategy."""
    import tensorflow as tf

    return Cluster(tf.distribute.get_strategy())


def tf_config(workers: str, worker_index: int) -> dict:
    """The `TF_CONFIG` of worker `worker_index` of a comma-separated HOST:PORT list.

    Raises:
        ConfigError: a malformed address, a repeated one, or an index out of range.
    """
    addresses = [w.strip() for w in workers.split(",") if w.strip()]
    for address in addresses:
        if not _is_address(address):
            raise ConfigError(f"workers must be HOST:PORT,HOST:PORT,..., received: {address!r}. "
                              "Try: --workers node1:12345,node2:12345")
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"workers lists an address more than once: {workers}")
    if not 0 <= worker_index < len(addresses):
        raise ConfigError(f"worker_index must be between 0 and {len(addresses) - 1} for "
                          f"{len(addresses)} workers, received: {worker_index}")
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": worker_index}}


def _is_address(address: object) -> bool:
    """Whether `address` is a HOST:PORT string, with a port from 1 to 65535 and no spaces or
    control characters."""
    if not isinstance(address, str):
        return False
    host, _, port = address.rpartition(":")
    return (bool(host) and host.isprintable() and " " not in host and port.isascii()
            and port.isdigit() and 0 < int(port) < 65536)


def _read_tf_config() -> dict | None:
    """The parsed `TF_CONFIG`, or None when it is not set.

    Raises:
        ConfigError: it is not JSON with a cluster and this task in it, or a job of its
            cluster is not a list of distinct HOST:PORT strings.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        found = json.loads(text)
        cluster, task = found["cluster"], found["task"]
        if not isinstance(cluster, dict):
            raise TypeError
        tasks = cluster[task["type"]]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError, OverflowError):
        raise ConfigError("TF_CONFIG must be JSON like {\"cluster\": {\"worker\": [\"host1:"
                          "port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", "
                          "\"index\": 0}}. Try: --workers HOST:PORT,... --worker-index I"
                          ) from None
    _check_jobs(cluster)
    if not tasks:
        raise ConfigError(f"TF_CONFIG's job {json.dumps(task['type'])} lists no tasks, so "
                          "this task is not in it. Try: --workers HOST:PORT,... --worker-index I")
    if not 0 <= index < len(tasks):
        raise ConfigError(f"TF_CONFIG's task index must be between 0 and {len(tasks) - 1} "
                          f"for its {len(tasks)} {one_line(task['type'])} tasks, received: "
                          f"{index}. Try: --workers HOST:PORT,... --worker-index I")
    return found


def _check_jobs(cluster: dict) -> None:
    """Each job of TF_CONFIG's cluster must list its tasks' distinct HOST:PORT strings,
    as `tf_config` writes them (TensorFlow's own errors about them are tracebacks)."""
    for job, tasks in cluster.items():
        if not isinstance(tasks, list) or not all(_is_address(t) for t in tasks):
            shown = json.dumps(tasks)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ConfigError(f"TF_CONFIG's job {json.dumps(job)} must be a list of HOST:PORT "
                              f"strings, received: {shown}. Try: \"cluster\": {{\"worker\": "
                              "[\"node1:12345\", \"node2:12345\"]}, or --workers "
                              "node1:12345,node2:12345 --worker-index I")
    addresses = [address for tasks in cluster.values() for address in tasks]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise ConfigError(f"TF_CONFIG lists an address more than once: {', '.join(repeated)}."
                          " Try: give every task its own HOST:PORT")


def _task_index(config: dict) -> tuple[int, int]:
    """(this task's place, number of tasks): a "chief" task comes first, then workers."""
    jobs = config["cluster"]
    order = [("chief", i) for i in range(len(jobs.get("chief", [])))]
    order += [("worker", i) for i in range(len(jobs.get("worker", [])))]
    task = (config["task"]["type"], int(config["task"]["index"]))
    if task not in order:
        raise ConfigError(f"TF_CONFIG's task {task[0]} {task[1]} is not a chief or a worker "
                          "(pawnet has no parameter servers or evaluators)")
    return order.index(task), len(order)


def multi_worker_asked(strategy: str, workers: str | None) -> bool:
    """Whether the settings (or `TF_CONFIG`) ask for several workers; reads no device."""
    config = _read_tf_config() if strategy == "auto" and workers is None else None
    return (strategy == "multi-worker" or workers is not None
            or (config is not None and _task_index(config)[1] > 1))


def connect(strategy: str = "auto", workers: str | None = None, worker_index: int | None = None,
            startup_timeout: int = STARTUP_TIMEOUT_S) -> Cluster:
    """The cluster a run trains on. Call before TensorFlow runs anything else. A
    multi-worker run waits up to `startup_timeout` seconds for every worker to start.

    Raises:
        ConfigError: bad flags or TF_CONFIG, or multi-worker without a cluster.
    """
    if (workers is None) != (worker_index is None):
        raise ConfigError("--workers and --worker-index go together. Try: --workers "
                          "node1:12345,node2:12345 --worker-index 0")
    if workers is not None and strategy not in ("auto", "multi-worker"):
        raise ConfigError(f"--workers trains with --strategy multi-worker, received: "
                          f"--strategy {strategy}")
    config = tf_config(workers, worker_index) if workers is not None else _read_tf_config()
    if strategy == "auto":
        strategy = "multi-worker" if config and _task_index(config)[1] > 1 else (
            "mirrored" if _gpus() > 1 else "one")
    if strategy == "multi-worker":
        if config is None:
            raise ConfigError("--strategy multi-worker needs TF_CONFIG, or --workers "
                              "HOST:PORT,... --worker-index I")
        return _multi_worker(config, startup_timeout)
    if strategy == "mirrored":
        return _mirrored()
    return local()


def _gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _mirrored() -> Cluster:
    import tensorflow as tf

    devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
               or [d.name for d in tf.config.list_logical_devices("CPU")])
    return Cluster(tf.distribute.MirroredStrategy(devices), "mirrored")


def _resolver(config: dict):
    """The cluster of `config` (TF_CONFIG's form) handed to the strategy as it is, so the
    process environment is never written."""
    import tensorflow as tf

    task = config["task"]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]), task_type=task["type"],
        task_id=int(task["index"]), rpc_layer="grpc")


def _multi_worker(config: dict, startup_timeout: int) -> Cluster:
    import tensorflow as tf

    from pawnet.training import keras_mwms

    index, count = _task_index(config)
    _warn_open_port(config, index, count)
    keras_mwms.apply()
    _meet_within(config, startup_timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_resolver(config))
    except tf.errors.DeadlineExceededError:
        raise ClusterError(f"worker {index} of {count} gave up after {startup_timeout} s: "
                           "not every worker started. Try: start every worker with the "
                           "same --workers, or wait longer with --startup-timeout") from None
    except (RuntimeError, tf.errors.OpError) as exc:
        raise ClusterError(f"cannot start worker {index} of {count}: {_reason(exc)}. "
                           "Try: start every worker with the same --workers"
                           ) from None
    return Cluster(strategy, "multi-worker", index, count)


def _warn_open_port(config: dict, index: int, count: int) -> None:
    """TensorFlow's gRPC server listens on every interface (IPv4 and IPv6), whatever host
    the cluster names, and runs the graph ops of anyone who reaches it; nothing in TF 2.21
    narrows it (docs/decisions.md, "Multi-worker ports are open to the network")."""
    task = config["task"]
    port = config["cluster"][task["type"]][int(task["index"])].rpartition(":")[2]
    log.warning(f"worker {index} of {count} listens on port {port} of every network "
          "interface, with no authentication: anyone who can reach that port can run code "
          "in this worker (TensorFlow cannot bind one address). Try: keep the workers on an "
          "isolated network, or behind a firewall that only lets the other workers in")


def _meet_within(config: dict, seconds: int) -> None:
    """The coordination service TensorFlow would set up, but with its workers' first
    meeting a barrier that fails after `seconds`: by default a worker whose peers never
    start waits for an hour, silently (docs/decisions.md, "Multi-worker start-up")."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    jobs = {job: tasks for job, tasks in config["cluster"].items() if job in ("chief", "worker")}
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(jobs),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
                          for job, tasks in jobs.items()],
        cluster_register_timeout_in_ms=seconds * 1000)
    context.context().coordination_service.cluster_register_with_barrier = True


_TRACEBACK = re.compile(r'^(Graph execution error|Detected at node|File "|\[\[|\[Op:)'
                        r"|most recent call last\):$")


def _reason(exc: BaseException) -> str:
    """What TensorFlow's error says, in one line: which task stopped, when it says so;
    else its last line that is not part of the traceback it carries."""
    text = str(getattr(exc, "message", None) or exc)
    lost = re.search(r"unhealthy.*?/job:(\w+)/replica:\d+/task:(\d+)", text, re.S)
    if lost:
        return f"{lost[1]} task {lost[2]} stopped sending heartbeats"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not _TRACEBACK.search(line.strip())]
    return lines[-1] if lines else type(exc).__name__


def split_batch(batch_size: int, cluster: Cluster) -> int:
    """Photos per replica of each step of `batch_size` photos (the global batch).

    Raises:
        ConfigError: the batch does not split evenly over the replicas.
    """
    replicas = cluster.strategy.num_replicas_in_sync
    if batch_size % replicas:
        fits = max(replicas, batch_size // replicas * replicas)
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {replicas} "
                          f"replicas (the batch is global, shared by all). Try: --batch-size "
                          f"{fits}")
    return batch_size // replicas


def all_sum(cluster: Cluster, value: np.ndarray, contribute: str = "all") -> np.ndarray:
    """The sum over workers of `value`; with `contribute="chief"`, only the chief's (so
    every worker gets exactly the chief's value)."""
    import tensorflow as tf

    if not cluster.multi_worker:
        return value
    return _summing(cluster.strategy, contribute)(tf.constant(value)).numpy()


@functools.cache
def _summing(strategy: Any, contribute: str):
    import tensorflow as tf

    replicas = len(strategy.extended.worker_devices)  # on each worker

    def step(v):
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group
        counts = replica == 0 if contribute == "chief" else replica % replicas == 0
        return context.all_reduce("SUM", tf.where(counts, v, tf.zeros_like(v)))

    @tf.function(reduce_retracing=True)
    def run(x):
        return strategy.experimental_local_results(strategy.run(step, args=(x,)))[0]

    return run


def check_same_run(cluster: Cluster, fingerprint: str, settings: str) -> None:
    """Every worker must train on the same photos with the same settings.

    Raises:
        ClusterError: they differ (on every worker, before any training).
    """
    if not cluster.multi_worker:
        return
    digests = [hashlib.sha256(text.encode()).digest() for text in (fingerprint, settings)]
    mine = np.frombuffer(b"".join(digests), np.uint8).astype(np.float64)
    total = all_sum(cluster, np.stack([mine, mine**2]))
    spread = total[1] / cluster.workers - (total[0] / cluster.workers) ** 2
    if np.any(spread[:32] > 0):
        raise ClusterError("the workers' photos differ (their data fingerprints do not "
                           "match). Try: give every worker the same photo folder")
    if np.any(spread[32:] > 0):
        raise ClusterError("the workers were given different settings. Try: run the same "
                           "pawnet train command on every worker, only --worker-index differs")


def broadcast(cluster: Cluster, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The chief's `arrays` on every worker (same shapes and dtypes everywhere)."""
    if not cluster.multi_worker:
        return list(arrays)
    flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays] or [np.zeros(0)])
    values = all_sum(cluster, flat, contribute="chief")
    out, start = [], 0
    for a in arrays:
        a = np.asarray(a)
        out.append(values[start:start + a.size].reshape(a.shape).astype(a.dtype))
        start += a.size
    return out


GATHER_ROWS = 8192  # rows summed per collective: bounds the memory it takes


def gather_rows(cluster: Cluster, rows: np.ndarray, total: int) -> np.ndarray:
    """Every worker's `rows` of its `shard` of `total` items, back in the items' order."""
    if not cluster.multi_worker:
        return rows
    out = np.zeros((total, *rows.shape[1:]), rows.dtype)
    out[cluster.index::cluster.workers] = rows
    for start in range(0, total, GATHER_ROWS):
        part = out[start:start + GATHER_ROWS]
        part[:] = all_sum(cluster, part)  # one worker's rows plus the others' zeros: exact
    return out


@contextlib.contextmanager
def lost_workers(cluster: Cluster) -> Iterator[None]:
    """Turn TensorFlow's errors about an unreachable worker into one ClusterError line."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError) as exc:
        if not cluster.multi_worker:
            raise
        raise ClusterError(f"worker {cluster.index} of {cluster.workers} lost contact with "
                           f"the others ({_reason(exc)}). Try: restart every worker with "
                           "pawnet train --resume RUN_DIR and the same --workers") from None
