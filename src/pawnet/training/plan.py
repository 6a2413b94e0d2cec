"""What a training run will do, settled before any fitting: its settings, run folder,
classes and split photos (a new run, or one resumed after its last finished epoch), and
what the bundle will record about it."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pawnet.config import Config, read_config_file, resolve_config
from pawnet.data.labels import read_labels
from pawnet.data.scan import Photo, PhotoSet, count_classes, scan
from pawnet.data.splits import assign_splits, fingerprint, read_manifest, write_manifest
from pawnet.distribute import Cluster, check_same_run
from pawnet.errors import ConfigError, DataError, one_line
from pawnet.run_folder import SUPERSEDED, RunFolder, read_history
from pawnet.storage import atomic_write_text, next_run_dir
from pawnet.training.history import resume_state

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SHOWN_SKIPPED = 10  # bad files listed on the terminal; data.json has them all


@dataclass
class Plan:
    """Everything resolved before fitting. `cfg` is fully resolved (the model's defaults
    filled in); `state` is the resume state saved after the last finished epoch."""

    cfg: Config
    run_dir: Path
    classes: list[str]
    photos: list[Photo]
    resumed: bool = False
    state: dict | None = None
    cluster: Cluster | None = None  # None: one device, in this process
    # What the validation photos showed, gathered by the trust fits (`training.trust`):
    # calibrated probabilities, the minimum confidence, then the "reference" that
    # provenance.json keeps for `pawnet serve` to watch for drift.
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def multi_worker(self) -> bool:
        return self.cluster is not None and self.cluster.multi_worker

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (always, on one machine)."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def initial_epoch(self) -> int:
        return int(self.state["epoch"]) if self.state else 0

    @property
    def pixel_cache(self) -> Path:
        """Where decoded pixels go when they do not fit in memory; removed after training."""
        return self.run_dir / ".cache"

    def split(self, name: str) -> list[Photo]:
        return [p for p in self.photos if p.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Photos per class in each split."""
        return {split: count_classes(self.photos, self.classes, split) for split in SPLIT_NAMES}


def new_plan(cfg: Config, cluster: Cluster | None = None) -> Plan:
    """Scan and split the photos, then create the run folder and record the split in it.
    A worker other than the chief works in a temporary folder instead.

    Raises:
        ConfigError: no photos given, or a resume asked for in a config file.
        DataError: fewer than 2 classes, or an empty training or validation split.
    """
    if cfg.resume:
        raise ConfigError(f"resume cannot come from a config file, received: {cfg.resume}. "
                          f"Try: pawnet train --resume {cfg.resume}")
    if not cfg.photos:
        raise ConfigError("no photos given. Try: pawnet train PATH/TO/PHOTOS, or "
                          "pawnet train --resume RUN_DIR")
    photoset = _scan(cfg)
    for skipped in photoset.skipped[:SHOWN_SKIPPED]:
        log.info(f"  skipped {one_line(skipped.path)}: {one_line(skipped.reason)}")
    if len(photoset.skipped) > SHOWN_SKIPPED:
        log.info(f"  ... and {len(photoset.skipped) - SHOWN_SKIPPED} more (see data.json in the "
                 "run folder)")
    if len(photoset.classes) < 2:
        raise DataError(
            f"training needs at least 2 classes, found {photoset.classes} in {cfg.photos}. "
            "Try: one sub-folder per class"
        )
    photos = assign_splits(photoset.photos, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    _check_splits(photos)
    _check_workers_agree(cluster, cfg, photos)
    if cluster is None or cluster.is_chief:
        run_dir = next_run_dir(cfg.out or "runs/train")
        cfg.out = str(run_dir)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix=f"pawnet-worker{cluster.index}-"))
    run = RunFolder(run_dir)
    atomic_write_text(run.config, cfg.to_yaml())
    write_manifest(run.manifest, photos)
    atomic_write_text(run.data, json.dumps(photoset.to_json(), indent=2) + "\n")
    return Plan(cfg, run_dir, photoset.classes, photos, cluster=cluster)


def _scan(cfg: Config) -> PhotoSet:
    """The photos of `cfg`, with its labels file applied; says what was found, and warns
    once of paths in the labels file that are no photo."""
    labels = read_labels(cfg.labels) if cfg.labels else None
    name = Path(cfg.labels).name if cfg.labels else "labels file"
    photoset = scan(cfg.photos, max_pixels=cfg.max_pixels, labels=labels, labels_name=name)
    log.info(photoset.summary())
    unknown, many = photoset.unknown_labels, len(photoset.unknown_labels) != 1
    if unknown:
        log.warning(f"{len(unknown)} path{'s' * many} in {one_line(name)} "
                    f"{'are not photos' if many else 'is not a photo'} under "
                    f"{one_line(cfg.photos)} (first: {one_line(unknown[0])}); "
                    f"{'they were' if many else 'it was'} ignored. Try: train on the folder "
                    "the labels file was written for, or remove those lines from it")
    return photoset


def _check_workers_agree(cluster: Cluster | None, cfg: Config, photos: list[Photo]) -> None:
    """Before anything is written: every worker has the same photos and settings."""
    if cluster is not None:
        own = ("out", "worker_index", "startup_timeout")  # may differ between workers
        settings = {k: v for k, v in cfg.to_dict().items() if k not in own}
        check_same_run(cluster, fingerprint(photos), json.dumps(settings, sort_keys=True))


def _check_splits(photos: list[Photo]) -> None:
    n_train = sum(p.split == "train" for p in photos)
    n_val = sum(p.split == "val" for p in photos)
    if not n_train or not n_val:
        raise DataError(
            f"need photos for both training and validation, got {n_train} and {n_val}. "
            "Try: add photos, or raise --val-fraction"
        )
    for label in sorted({p.label for p in photos}):
        missing = [s for s in ("train", "val") if not any(p.split == s and p.label == label
                                                          for p in photos)]
        if missing:
            count = sum(p.label == label for p in photos)
            log.warning(f"class {label!r} has {count} photo{'s' * (count != 1)}, none in "
                        f"{' or '.join(missing)}; its figures there mean nothing. Try: add photos "
                        "of it")


def _flag(key: str) -> str:
    return "PHOTOS" if key == "photos" else "--" + key.replace("_", "-")


RESUME_MAY_CHANGE = ("epochs", "strategy", "workers", "worker_index", "startup_timeout")


def check_resumable(run_dir: Path, **given: Any) -> None:
    """Raises:
        ConfigError: `run_dir` is not a run folder, or settings that may not change are
            given with `--resume`.
    """
    if not RunFolder(run_dir).config.exists():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (not a pawnet run)")
    extra = sorted(k for k, v in given.items()
                   if v is not None and k not in (*RESUME_MAY_CHANGE, "resume"))
    if extra:
        raise ConfigError(
            "--resume continues a run with its saved settings; only "
            f"{', '.join(_flag(k) for k in RESUME_MAY_CHANGE)} may change, received: "
            f"{', '.join(_flag(k) for k in extra)}"
        )


def resume_plan(run_dir: Path, **given: Any) -> Plan:
    """The plan of a run to continue with its saved settings; only `epochs` and where it
    trains (`strategy`, `workers`, `worker_index`) may change.

    Raises:
        ConfigError: not a run folder, or settings other than epochs given.
        DataError: photos of its split are gone.
    """
    check_resumable(run_dir, **given)
    saved = read_config_file(RunFolder(run_dir).config)
    for key in RESUME_MAY_CHANGE[1:]:
        saved.pop(key, None)  # where the run trained before says nothing of where it goes on
    cfg = resolve_config(saved, **{k: given.get(k) for k in RESUME_MAY_CHANGE})
    photos = read_manifest(RunFolder(run_dir).manifest)
    missing = [p.path for p in photos if not Path(p.path).exists()]
    if missing:
        raise DataError(f"cannot resume {run_dir}: {len(missing)} photos of its split are gone, "
                        f"e.g. {missing[0]}")
    plan = Plan(cfg, run_dir, sorted({p.label for p in photos}), photos, resumed=True,
                state=resume_state(RunFolder(run_dir).checkpoints))
    return plan




def finished_epochs(run_dir: Path) -> int | None:
    """The epochs a finished run (one holding a bundle) was set to train; None when the run
    is not finished."""
    bundle = RunFolder(run_dir).bundle
    if not (bundle / "bundle.json").is_file():
        return None
    saved = read_config_file(bundle / "config.yaml") if (bundle / "config.yaml").is_file() \
        else read_config_file(RunFolder(run_dir).config)
    return int(saved.get("epochs") or 0)


def already_finished(run_dir: Path, epochs: int | None) -> bool:
    """Whether `--resume RUN_DIR [--epochs N]` has nothing to do: the run is finished and N
    (when given) is no more than the epochs it was set to; says so."""
    done = finished_epochs(run_dir)
    if done is None or (epochs is not None and epochs > done):
        return False
    ran = len(read_history(RunFolder(run_dir).history))
    early = f", stopped early after {ran}" if 0 < ran < done else ""
    log.info(f"{one_line(run_dir)} is finished ({done} epochs{early}; its bundle is "
             f"{one_line(run_dir / 'bundle')}): nothing to do. To train it for longer: pawnet "
             f"train --resume {one_line(run_dir)} --epochs N, with N more than {done}")
    return True


def _set_aside(run_dir: Path, epochs: int) -> None:
    """Move a finished run's bundle and what describes it (evaluations, exports, heat-maps)
    into `previous/N/` with a note, before it trains on: nothing describes a model that no
    longer exists, and the old model stays usable."""
    found = [p for pattern in SUPERSEDED for p in sorted(run_dir.glob(pattern))
             if p.is_dir() and not p.is_symlink()]
    if not found:
        return
    previous = next_run_dir(RunFolder(run_dir).previous / "1")
    for path in found:
        os.replace(path, previous / path.name)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(previous / "NOTE.txt",
                      f"The model of {run_dir} and its reports as they were before `pawnet "
                      f"train --resume {run_dir} --epochs {epochs}` on {when}. The run's "
                      "bundle/ holds the model trained on; this bundle/ is still usable as "
                      "a MODEL.\n")
    log.info(f"{one_line(run_dir)} was finished: its bundle and reports moved to "
             f"{one_line(previous)}; training on to {epochs} epochs")


def start_resumed(plan: Plan, cluster: Cluster | None = None) -> Plan:
    """Ready a resumed plan on this worker: the chief clears the killed run's partial
    pixels; another worker continues from a copy of the run folder in a temporary one."""
    plan.cluster = cluster
    _check_workers_agree(cluster, plan.cfg, plan.photos)
    if cluster is None or cluster.is_chief:
        if finished_epochs(plan.run_dir) is not None:
            _set_aside(plan.run_dir, plan.cfg.epochs)
        shutil.rmtree(plan.pixel_cache, ignore_errors=True)
        return plan
    copy = Path(tempfile.mkdtemp(prefix=f"pawnet-worker{cluster.index}-"))
    run = RunFolder(plan.run_dir)
    for source in (run.history, run.checkpoints):
        name = source.name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns(".*"))
        elif source.exists():
            shutil.copy2(source, copy / name)
    plan.run_dir = copy
    return plan


def _version(*distributions: str) -> str:
    """The installed version of the first of `distributions` that is installed, read from
    its metadata: TensorFlow need not be imported to say which one would run."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _versions() -> dict[str, str]:
    from pawnet import __version__

    return {"pawnet": __version__, "keras": _version("keras"),
            "tensorflow": _version("tensorflow-cpu", "tensorflow"),
            "python": platform.python_version()}


def _device() -> str:
    """Where TensorFlow ran, when the run used it; a run without it ran on the CPU."""
    if "tensorflow" not in sys.modules:
        return "CPU"
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def provenance(plan: Plan, history: list[dict[str, float]], metrics: dict[str, float],
               fit_seconds: float) -> dict[str, Any]:
    """What `provenance.json` records: versions, which photos, how training went, and
    what the validation photos showed (the drift reference), once the trust fits ran."""
    cfg = plan.cfg
    strategy = plan.cluster.strategy if plan.cluster else None
    best = min(history, key=lambda r: r.get("val_loss", math.inf)) if history else None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "data": {"root": cfg.photos, "fingerprint": fingerprint(plan.photos),
                 "counts": plan.counts(), "split_seed": cfg.seed,
                 "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction},
        "training": {"epochs_run": len(history),
                     "best_epoch": int(best["epoch"]) if best else None,
                     "fit_seconds_this_session": round(fit_seconds, 1),
                     "device": _device(),
                     "strategy": plan.cluster.kind if plan.cluster else "one",
                     "workers": plan.cluster.workers if plan.cluster else 1,
                     "replicas": strategy.num_replicas_in_sync if strategy else 1},
        "metrics": metrics,
        **({"reference": plan.validation["reference"]}
           if plan.validation.get("reference") else {}),
    }
