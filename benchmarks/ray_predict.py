"""Photos per second of `pawnet predict` in one process and on a local Ray cluster.

Labels the same photos with the local engine, then on Ray with 1 and with 2 worker actors
(docs/scaling.md, "Batch prediction on Ray"). Each time counts from the model's loading
(in each worker, on Ray) to the last row; the local cluster is started once, before, and
the model is converted for the runtime once, before any timing. Every engine's rows must
be equal, or the script stops.

    .venv/bin/python benchmarks/ray_predict.py ../shared/data/tongpython --limit 400
"""

import argparse
import os
import time

import pawnet  # before TensorFlow (its settings)
from pawnet.inference.predictor import expand_paths, load

MODEL = "imagenet-catdog"


def timed(label: str, run, n: int) -> list:
    started = time.perf_counter()
    results = run()
    seconds = time.perf_counter() - started
    print(f"{label:<16} {n} photos in {seconds:6.1f} s: {n / seconds:6.2f} photos/s",
          flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", help="photos or folders")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--limit", type=int, default=400, help="photos to label (0: all)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    args = parser.parse_args()

    import ray

    from pawnet.inference.ray_predict import predict_on_ray

    paths = expand_paths(args.photos)[: args.limit or None]
    load(args.model).predict(paths[:1])  # converts the model once, cached for the workers
    print(f"pawnet {pawnet.__version__}, ray {ray.__version__}, {os.cpu_count()} cores, "
          f"{args.model}", flush=True)
    want = timed("local", lambda: load(args.model).predict(paths), len(paths))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            got = timed(f"ray, {workers} worker{'s' * (workers > 1)}",
                        lambda w=workers: predict_on_ray(args.model, paths, workers=w),
                        len(paths))
            if got != want:
                raise SystemExit(f"ray with {workers} workers labelled differently")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
