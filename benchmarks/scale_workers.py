"""Scaling on tf.distribute: photos/s per worker with 1 and 2 local workers, and the share
of step time spent all-reducing gradients.

Each worker runs pawnet's own pieces of `pawnet train` (the strategy from
`pawnet.distribute.connect`, the sharded image pipeline, the compiled model) with Keras
`fit`, and times its epochs after the first (which decodes, caches and traces). Then the
workers time an all-reduce of gradient-sized vectors: this model's, tutorial A's (19 M
parameters), EfficientNet-Lite0 fine-tuning its top 2 blocks, and the transfer head's.

On one 2-core machine, two workers share the same two cores and a loopback "network", so
this shows the overhead of distribution, not a speed-up; docs/scaling.md turns the figures
into a model of 1-64 workers.

    .venv/bin/python benchmarks/scale_workers.py [--photos DIR] [--model pawnet-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "cvtricks" / "train"
REDUCE_REPEATS = 5


def gradient_sizes() -> dict[str, int]:
    """Trainable parameters (floats in a gradient) of the models docs/scaling.md models."""
    from pawnet.models.pretrained import build_head, load_backbone
    from pawnet.models.registry import get_model_spec
    from pawnet.training.transfer import unfreeze_top_blocks

    def trainable(model) -> int:
        return int(sum(w.numpy().size for w in model.trainable_weights))

    lite0 = get_model_spec("efficientnet-lite0")
    backbone = load_backbone(lite0, trainable_later=True)
    head = build_head(2, backbone)
    unfreeze_top_blocks(backbone, 2)
    return {"tutorial-a-cnn": trainable(get_model_spec("tutorial-a-cnn").build(2, 150)),
            "lite0 fine-tune (top 2 blocks + head)": trainable(backbone) + trainable(head),
            "transfer head": trainable(head)}


def worker(args: argparse.Namespace) -> None:
    """One worker: train a few epochs, time them, then time all-reduces; print JSON."""
    import keras
    import numpy as np

    from pawnet.config import resolve_config
    from pawnet.distribute import all_sum, connect, local
    from pawnet.models.registry import get_model_spec
    from pawnet.models.spec import output_kind
    from pawnet.training.plan import new_plan
    from pawnet.training.recipe import compile_model, image_datasets, steps_per_epoch

    cluster = connect("multi-worker", args.workers, args.index) if args.workers else local()
    cfg = resolve_config(photos=args.photos, model=args.model, epochs=args.epochs,
                         batch_size=args.batch_size, out=args.out, strategy=cluster.kind)
    plan = new_plan(cfg, cluster)
    spec = get_model_spec(cfg.model)
    with cluster.scope():
        model = spec.build(len(plan.classes), cfg.image_size)
        compile_model(model, cfg, steps_per_epoch(len(plan.split("train")), cfg))
    train_ds, _ = image_datasets(plan, output_kind(model) == "sigmoid")
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - times.pop()))
    model.fit(train_ds, epochs=cfg.epochs, callbacks=[timer], shuffle=False, verbose=0)
    grads = int(sum(w.numpy().size for w in model.trainable_weights))
    reduce_ms = {}
    for name, size in {"this model": grads, **json.loads(args.sizes)}.items():
        vector = np.ones(size, np.float32)
        all_sum(cluster, vector)  # traced once per shape, outside the timing
        started = time.perf_counter()
        for _ in range(REDUCE_REPEATS):
            all_sum(cluster, vector)
        reduce_ms[name] = 1000 * (time.perf_counter() - started) / REDUCE_REPEATS
    photos = len(cluster.shard(plan.split("train")))
    print("RESULT " + json.dumps({
        "index": cluster.index, "workers": cluster.workers, "photos": photos,
        "steps": steps_per_epoch(len(plan.split("train")), cfg), "epoch_s": times[1:],
        "gradient_floats": grads, "reduce_ms": reduce_ms}), flush=True)


def free_ports(n: int) -> list[int]:
    """`n` loopback ports free right now, for local workers."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(n: int, args: argparse.Namespace, sizes: dict[str, int], out: Path) -> list[dict]:
    workers = ",".join(f"127.0.0.1:{p}" for p in free_ports(n)) if n > 1 else ""
    procs = []
    for index in range(n):
        cmd = [sys.executable, __file__, "--worker", "--index", str(index),
               "--workers", workers, "--photos", str(args.photos), "--model", args.model,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--out", str(out / f"n{n}"), "--sizes", json.dumps(sizes)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        output, _ = proc.communicate(timeout=1800)
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"a worker failed (exit {proc.returncode}):\n{output[-2000:]}")
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def report(n: int, results: list[dict]) -> None:
    for r in results:
        epoch = sum(r["epoch_s"]) / len(r["epoch_s"])
        step_ms = 1000 * epoch / r["steps"]
        share = r["reduce_ms"]["this model"] / step_ms if n > 1 else 0.0
        print(f"{n} worker{'s' * (n > 1)}, worker {r['index']}: {r['photos']} photos/epoch, "
              f"epoch {epoch:.2f}s, step {step_ms:.0f} ms, {r['photos'] / epoch:.1f} "
              f"photos/s, all-reduce {share:.0%} of the step "
              f"({r['gradient_floats']:,} floats)")
    if n > 1:
        for name, ms in results[0]["reduce_ms"].items():
            print(f"  all-reduce of {name}: {ms:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--model", default="pawnet-cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import tempfile

    sizes = gradient_sizes()
    print("gradient floats: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    with tempfile.TemporaryDirectory() as out:
        for n in (1, 2):
            report(n, run(n, args, sizes, Path(out)))
    print("On one machine the workers share its cores and loopback: this is the overhead "
          "of distribution, not a speed-up (docs/scaling.md).")


if __name__ == "__main__":
    main()
