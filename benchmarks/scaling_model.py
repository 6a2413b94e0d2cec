"""Throughput model of multi-worker training, 1-64 workers: the tables in docs/scaling.md.

Plain Python, no TensorFlow. Per step, each worker computes its batch, then the gradients
are all-reduced in a ring; nothing overlaps (pessimistic: TensorFlow can start reducing
early gradients while later ones are still computed).

    t(W)          = t_compute + t_allreduce(W)
    t_allreduce(W) = 2 (W-1)/W * gradient_bytes / bandwidth + 2 (W-1) * latency
    photos/s(W)   = W * BATCH / t(W)           weak scaling: BATCH photos per worker
    efficiency(W) = t_compute / t(W)           photos/s(W) / (W * photos/s(1))

Inputs (all measured on this machine unless marked):

- STEP_MS: one-process step time at batch 32 on the 2-core AMD EPYC CPU (shared with
  other work while measured), in ms:
  - tutorial-a-cnn, 150 px: `benchmarks/scale_workers.py --model tutorial-a-cnn
    --batch-size 32 --epochs 2`, 1 worker: 1427 ms.
  - efficientnet-lite0 fine-tuning its top 2 blocks + head, 224 px: Keras fit of
    load_backbone(trainable_later=True) + build_head + unfreeze_top_blocks(2), epochs 2-3:
    1461 and 1519 ms, mean 1490 ms.
  - pawnet-cnn, 96 px: `benchmarks/scale_workers.py`, 1 worker: 259 ms.
  - transfer head on 1280-d features (head_training_set, 444 steps a call): 1.2 ms.
- FLOATS: trainable parameters = floats in one gradient (`scale_workers.py` prints them).
- GPU_SPEEDUP (assumed): a GPU computes a step this many times faster than this CPU.
- LATENCY_S (assumed): 50 us per ring hop, a datacenter network.
- BANDWIDTHS (assumed): 10 and 100 Gbit/s links, fully usable by the all-reduce.
- LOOPBACK: measured 2-worker all-reduces here, to show the effective bandwidth of gRPC on
  loopback on a busy 2-core machine.

    .venv/bin/python benchmarks/scaling_model.py
"""

from __future__ import annotations

BATCH = 32  # photos per worker per step
BYTES_PER_FLOAT = 4
LATENCY_S = 50e-6
BANDWIDTHS = {"10 Gbit/s": 10e9 / 8, "100 Gbit/s": 100e9 / 8}  # bytes per second
GPU_SPEEDUP = 50
WORKERS = (1, 2, 4, 8, 16, 32, 64)
STOPS_BELOW = 0.5  # efficiency under which a model "stops scaling"

# name: (gradient floats, one-process step ms on this CPU, distributed by pawnet)
MODELS = {
    "tutorial-a-cnn": (19_034_177, 1427.0, True),
    "lite0 fine-tune (top 2 blocks + head)": (1_482_241, 1490.0, True),
    "pawnet-cnn": (1_943_441, 259.0, True),
    "transfer head": (1_281, 1.2, False),
}
# name: (gradient floats, measured 2-worker all-reduce ms on loopback), two runs
LOOPBACK = {
    "tutorial-a-cnn": (19_034_177, (635.9, 494.9)),
    "lite0 fine-tune": (1_482_241, (59.6, 33.8)),
    "pawnet-cnn": (1_943_441, (66.8,)),
    "transfer head": (1_281, (3.7, 3.8)),
}


def allreduce_s(floats: int, workers: int, bandwidth: float) -> float:
    """Ring all-reduce: 2 (W-1) hops, each moving 1/W of the gradient."""
    size = floats * BYTES_PER_FLOAT
    return 2 * (workers - 1) / workers * size / bandwidth + 2 * (workers - 1) * LATENCY_S


def step_s(compute_s: float, floats: int, workers: int, bandwidth: float) -> float:
    return compute_s + allreduce_s(floats, workers, bandwidth)


def stops_at(compute_s: float, floats: int, bandwidth: float) -> str:
    """The first worker count whose efficiency is under STOPS_BELOW, or '> 64'."""
    for w in range(2, max(WORKERS) + 1):
        if compute_s / step_s(compute_s, floats, w, bandwidth) < STOPS_BELOW:
            return str(w)
    return f"> {max(WORKERS)}"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.3g} ms" if seconds < 0.01 else f"{1000 * seconds:.0f} ms"


def table(name: str, floats: int, cpu_ms: float, distributed: bool) -> list[str]:
    mb = floats * BYTES_PER_FLOAT / 1e6
    note = "" if distributed else ";\nnot distributed (the chief trains it), shown for contrast"
    lines = [f"**{name}**: {floats:,} floats = {mb:.3g} MB of gradients{note}", "",
             "| network | t_compute | " + " | ".join(f"W={w}" for w in WORKERS)
             + " | stops scaling at W |",
             "|---|---|" + "---|" * len(WORKERS) + "---|"]
    devices = [("CPU", cpu_ms / 1000)]
    if distributed:  # a GPU would only make the undistributed head's case more lopsided
        devices.append(("GPU est.", cpu_ms / 1000 / GPU_SPEEDUP))
    for device, compute_s in devices:
        for net, bandwidth in BANDWIDTHS.items():
            cells = []
            for w in WORKERS:
                t = step_s(compute_s, floats, w, bandwidth)
                cells.append(f"{w * BATCH / t:,.0f} ({compute_s / t:.0%})")
            lines.append(f"| {net} | {device} {_ms(compute_s)} | " + " | ".join(cells)
                         + f" | {stops_at(compute_s, floats, bandwidth)} |")
    return [*lines, ""]


def main() -> None:
    print(f"Photos/s (efficiency) at W workers, {BATCH} photos per worker per step,\n"
          f"ring all-reduce with {LATENCY_S * 1e6:.0f} us per hop, no overlap;\n"
          f"GPU est. = this CPU's step / {GPU_SPEEDUP}.\n")
    for name, (floats, cpu_ms, distributed) in MODELS.items():
        print("\n".join(table(name, floats, cpu_ms, distributed)))
    print("Loopback here, 2 workers (at W=2 each worker sends the whole gradient once):\n")
    print("| gradient | measured all-reduce | effective bandwidth |")
    print("|---|---|---|")
    for name, (floats, runs) in LOOPBACK.items():
        size = floats * BYTES_PER_FLOAT
        if size < 1e6:  # latency-bound: the figure is the fixed cost of one collective
            speed = "none: a fixed cost per collective call"
        else:
            speed = " / ".join(f"{size / (ms / 1000) * 8 / 1e9:.2g}" for ms in runs) + " Gbit/s"
        print(f"| {name} ({size / 1e6:.3g} MB) | {' / '.join(f'{ms:g}' for ms in runs)} ms | "
              f"{speed} |")


if __name__ == "__main__":
    main()
