"""Batch prediction on a Ray cluster (`pip install 'pawnet[ray]'`): `RayPredictor` for a
Ray Data pipeline of your own, and `predict_on_ray` behind `pawnet predict --engine ray`.

Each worker actor loads the model once (`pawnet.load`) and labels batch after batch with
the single-process `Predictor`, so the rows are those of `pawnet predict`: the same fields,
the same numbers, and an error row, not a failed job, for a photo that cannot be read.
Ray is imported only when a cluster is needed; this module imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pawnet.errors import ConfigError, PawnetError
from pawnet.inference.predictor import Prediction, load

FIELDS = ("path", "label", "probabilities", "ood_score", "reason", "error")  # of Prediction
BATCH_SIZE = 16  # photos per Ray batch: small enough to spread a few hundred over workers
WAIT_FOR_WORKERS_S = 600  # for all the workers to start (nodes to join), then give up
_ORDER = "pawnet_index"  # the input position, carried through by `predict_on_ray`


def import_ray():
    """The `ray` module with Ray Data, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # fails on bare ray (no pyarrow): the extra is ray[data]
    except ImportError:
        raise ConfigError("batch prediction on Ray needs the ray package with Ray Data, "
                          "which is not installed. Try: pip install 'pawnet[ray]'") from None
    return ray


def prediction_schema(classes: Sequence[str]):
    """The Arrow schema of `RayPredictor`'s rows: `Prediction`'s fields, `probabilities` a
    struct of one float per class. Fixed per model, so every batch has the same schema
    even when all of its photos are errors."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("label", pa.string()),
                      ("probabilities", pa.struct([(c, pa.float64()) for c in classes])),
                      ("ood_score", pa.float64()), ("reason", pa.string()),
                      ("error", pa.string())])


def _columns(batch: Any) -> dict[str, list]:
    """A Ray Data batch in any batch format (NumPy dict, pandas, Arrow) as lists."""
    if hasattr(batch, "to_pydict"):  # pyarrow.Table
        return batch.to_pydict()
    if hasattr(batch, "columns") and hasattr(batch, "to_dict"):  # pandas.DataFrame
        return batch.to_dict("list")
    if isinstance(batch, Mapping):
        return {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in batch.items()}
    raise TypeError(f"a Ray Data batch is a dict of columns, a pandas DataFrame or a "
                    f"pyarrow Table; received: {type(batch).__name__}")


class RayPredictor:
    """Label photos in a Ray Data pipeline: a callable class for `Dataset.map_batches`.

    Each worker actor loads the model once; each batch is decoded and labelled by the same
    `Predictor` as `pawnet predict`. A batch needs a `bytes` column (the photos' contents,
    as `ray.data.read_binary_files` gives them) or a `path` column (files that every worker
    can open at that path), or both. Out comes one row per photo with `Prediction`'s
    fields: `path` (the input's, or "<bytes>"), `label`, `probabilities` (a struct, one
    float per class), `ood_score`, `reason`, and `error` (set, with the rest empty, for a
    photo that cannot be read). Other input columns are kept as they are.

    Args:
        model: a run folder, bundle folder or built-in model name, at the same path on
            every node.
        runtime: "auto", "keras", "onnx" or "litert" (see `pawnet.load`). Defaults to
            "auto".
        tta: average each photo with its mirror image. Defaults to False.
        min_confidence: below this top probability a photo is `unsure`. Defaults to None:
            the bundle's.
        batch_size: photos per model call. Defaults to 32.

    >>> ds = ray.data.read_binary_files("/shared/photos", include_paths=True)
    >>> labelled = ds.map_batches(RayPredictor, fn_constructor_kwargs={"model": "/shared/run"},
    ...                           compute=ray.data.ActorPoolStrategy(size=4), batch_size=16)
    >>> labelled.write_parquet("/shared/labels")
    """

    def __init__(self, model: str | Path, runtime: str = "auto", tta: bool = False,
                 min_confidence: float | None = None, batch_size: int = 32):
        try:
            self.predictor = load(model, batch_size=batch_size, runtime=runtime, tta=tta,
                                  min_confidence=min_confidence)
        except PawnetError as exc:  # Ray would restart a failing actor again and again;
            self.failed = exc  # raised from a batch, it stops the job with this message
            return
        self.failed = None
        self.schema = prediction_schema(self.predictor.classes)

    def __call__(self, batch: Any):
        import pyarrow as pa

        if self.failed is not None:
            raise self.failed
        columns = _columns(batch)
        clash = sorted(set(columns) & set(FIELDS[1:]))
        if clash:  # the user's own `label` column must not be overwritten unseen
            raise ValueError(f"RayPredictor writes the columns {', '.join(FIELDS)}; the input "
                             f"already has {', '.join(clash)}. Rename them first.")
        sources = columns.get("bytes", columns.get("path"))
        if sources is None:
            raise ValueError(f"RayPredictor needs a 'bytes' or a 'path' column; received: "
                             f"{', '.join(columns) or 'no column'}")
        names = columns.get("path", ["<bytes>"] * len(sources))
        results = self.predictor.predict(list(sources), names=names)
        table = pa.Table.from_pylist([{f: getattr(r, f) for f in FIELDS} for r in results],
                                     schema=self.schema)
        for name, values in columns.items():
            if name not in ("bytes", "path"):
                table = table.append_column(name, pa.array(values))
        return table


def _connect(ray, address: str | None, workers: int | None) -> bool:
    """Join the cluster at `address`, or start a local one; False when Ray was already
    initialised in this process (then it is left as it is)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is not None:
        ray.init(address=address, **quiet)
    else:  # enough CPUs for `workers` actors of one CPU each, however many cores
        ray.init(num_cpus=max(os.cpu_count() or 1, workers or 0), include_dashboard=False,
                 **quiet)
    return True


def predict_on_ray(model: str | Path, paths: Sequence[str | Path], *,
                   address: str | None = None, workers: int | None = None,
                   batch_size: int = BATCH_SIZE, runtime: str = "auto", tta: bool = False,
                   min_confidence: float | None = None) -> list[Prediction]:
    """Label photos on a Ray cluster: what `load(model, ...).predict(paths)` returns, with
    the work shared by `workers` actors that each load the model once.

    Args:
        model: a run folder, bundle folder or built-in model name; a folder must be at the
            same absolute path on every node.
        paths: photo files; each worker reads its own, so they must be at the same
            absolute path on every node (shared storage).
        address: the cluster to join ("HOST:PORT" of its head, or "auto"). Defaults to
            None: a local cluster on this machine, shut down at the end. A Ray already
            initialised in this process is used as it is.
        workers: worker actors. Defaults to None: one per node of the cluster.
        batch_size: photos per Ray batch. Defaults to 16.
        runtime, tta, min_confidence: as for `pawnet.load`.

    Returns:
        One `Prediction` per path, in the order of `paths`; `path` as given.

    Raises:
        ConfigError: Ray is not installed, or `workers` is below 1.
    """
    ray = import_ray()
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1; received: {workers}")
    if Path(model).exists():  # the workers' current folder is not ours
        model = os.path.abspath(model)
    started = _connect(ray, address, workers)
    try:
        rows = _run(ray, model, paths, workers, batch_size,
                    {"runtime": runtime, "tta": tta, "min_confidence": min_confidence})
    finally:
        if started:
            ray.shutdown()
    return [Prediction(**{**{f: row[f] for f in FIELDS}, "path": str(paths[row[_ORDER]])})
            for row in rows]


@contextlib.contextmanager
def _data_context(ray, **values: Any) -> Iterator[None]:
    """Ray Data settings for the block, then back as they were (the caller's own Ray)."""
    context = ray.data.DataContext.get_current()
    values = {k: v for k, v in values.items() if hasattr(context, k)}  # some are newer
    saved = {k: getattr(context, k) for k in values}
    for name, value in values.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _run(ray, model: str | Path, paths: Sequence[str | Path], workers: int | None,
         batch_size: int, settings: dict) -> list[dict]:
    """The rows of `RayPredictor` over `paths`, sorted back into their order."""
    workers = workers or sum(1 for node in ray.nodes() if node["Alive"])
    items = [{_ORDER: i, "path": os.path.abspath(p)} for i, p in enumerate(paths)]
    # raise_original: a worker's PawnetError (a bad model or runtime) reaches us as such,
    # not as a UserCodeException that lost it on the way; wait_for_min_actors_s: more
    # workers than CPUs would wait forever on a cluster that does not grow. A dataset
    # keeps the settings in force when it is made.
    with _data_context(ray, enable_progress_bars=False, raise_original_map_exception=True,
                       wait_for_min_actors_s=WAIT_FOR_WORKERS_S):
        labelled = ray.data.from_items(items).map_batches(
            RayPredictor, fn_constructor_kwargs={"model": model, **settings},
            compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch_size,
            num_cpus=1)
        batches = labelled.iter_batches(batch_format="pyarrow", batch_size=None)
        try:
            rows = [row for batch in batches for row in batch.to_pylist()]
        except PawnetError as exc:  # RayTaskError(ConfigError), say: a traceback for message
            cause = getattr(exc, "cause", exc)  # the worker's error, with Ray's retry notes
            raise type(cause)(str(cause).partition("\n")[0]) from None  # on later lines
    return sorted(rows, key=lambda row: row[_ORDER])
