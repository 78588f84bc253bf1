"""Experiment tracking: every training's parameters, per-epoch metrics and artifacts in TensorBoard
and, optionally, MLflow (a local file store, no server). Off by default; the run directory is
never changed (tracking writes only under its own folder).

Turn it on for any command that trains (``train``, ``retrain``, ``tune``, ``demo``, ...)::

    SHOPFORMER_TRACK=tensorboard shopformer train data/shop -o runs/shop
    SHOPFORMER_TRACK=tensorboard,mlflow SHOPFORMER_TRACK_DIR=tracking shopformer train ...
    shopformer retrain registry --events today.csv --track tensorboard --track mlflow
    tensorboard --logdir tracking/tensorboard          # or: mlflow ui --backend-store-uri tracking/mlruns

Needs the ``track`` extra (``pip install 'shopformer[track]'``: tensorboard, mlflow-skinny).

What is logged: the flattened config as parameters (``model.dim`` ...); each epoch's loss,
learning rate, epoch seconds and validation metrics (``valid_ndcg@10`` ...) at a step that keeps
counting across the several ``fit`` calls of one training (e.g. encoder, then head refit); at the
end, final metrics and artifacts (the files ``fit`` wrote: ``train_log.csv``, ``training_curve.png``,
and whatever the caller adds, e.g. a registry version's ``version.json`` and report).

``fit`` calls :func:`epoch_hook` once (the only coupling). A caller opens a :func:`session` around
a training; without one, a training under ``SHOPFORMER_TRACK`` gets its own session, closed at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopformer.config import Config

BACKENDS = ("tensorboard", "mlflow")
ENV_TRACK, ENV_DIR = "SHOPFORMER_TRACK", "SHOPFORMER_TRACK_DIR"
EpochHook = Callable[[int, dict], None]


@dataclass(frozen=True)
class TrackingConfig:
    backends: tuple[str, ...] = ()
    root: Path = Path("tracking")
    experiment: str = "shopformer"

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"tracking backend {bad[0]!r}: expected one of {', '.join(BACKENDS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TrackingConfig:
        """``SHOPFORMER_TRACK=tensorboard,mlflow`` and ``SHOPFORMER_TRACK_DIR`` (default ./tracking)."""
        names = tuple(b.strip().lower() for b in environ.get(ENV_TRACK, "").split(",") if b.strip())
        return cls(names, Path(environ.get(ENV_DIR) or "tracking"))


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"model.dim": 64, ...}``; lists and None as text."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, bool | int | float | str) else json.dumps(v)
    return out


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclass
class Tracker:
    """One tracked training: a TensorBoard writer and/or an MLflow run."""

    config: TrackingConfig
    name: str
    step: int = 0
    log_dirs: list[Path] = field(default_factory=list)
    _tb: Any = None
    _mlflow: Any = None
    _closed: bool = False

    def start(self, params: Mapping[str, Any]) -> Tracker:
        root = self.config.root.resolve()
        flat = flatten(params)
        if "tensorboard" in self.config.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("TensorBoard tracking needs the tensorboard package: pip install "
                                  "'shopformer[track]'") from err
            self._tb = SummaryWriter(log_dir=str(root / "tensorboard" / self.name))
            self._tb.add_text("params", "\n".join(f"    {k} = {v}" for k, v in sorted(flat.items())))
        if "mlflow" in self.config.backends:
            try:
                import mlflow
            except ImportError as err:
                raise ImportError("MLflow tracking needs mlflow: pip install 'shopformer[track]'") from err
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, no server
            mlflow.set_tracking_uri((root / "mlruns").as_uri())
            mlflow.set_experiment(self.config.experiment)
            self._mlflow = mlflow
            mlflow.start_run(run_name=self.name)
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        return self

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """More parameters, known only later (e.g. a retrain's config)."""
        flat = flatten(params, prefix)
        if self._tb is not None:
            self._tb.add_text(f"{prefix}params", "\n".join(f"    {k} = {v}" for k, v in sorted(flat.items())))
        if self._mlflow is not None:
            self._mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        values = {f"{prefix}{k}".replace("@", "_at_") if self._mlflow else f"{prefix}{k}": v
                  for k, v in _numbers(metrics).items()}
        step = self.step if step is None else step
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k.replace("_at_", "@"), v, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=step)

    def log_epoch(self, epoch: int, row: Mapping[str, Any], log_dir: str | Path | None) -> None:
        self.step += 1
        self.log_metrics({k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch})
        if log_dir is not None and Path(log_dir) not in self.log_dirs:
            self.log_dirs.append(Path(log_dir))

    def log_artifacts(self, paths: list[Path]) -> None:
        """Files (folders: their files) to MLflow; figures and JSON to TensorBoard as images / text."""
        files = [f for p in paths if p.exists() for f in ([p] if p.is_file() else sorted(p.rglob("*")))
                 if f.is_file()]
        for f in files:
            if self._mlflow is not None:
                self._mlflow.log_artifact(str(f))
            if self._tb is not None and f.suffix == ".png":
                import numpy as np
                from matplotlib.image import imread

                self._tb.add_image(f.stem, np.asarray(imread(str(f)))[..., :3], self.step, dataformats="HWC")
            elif self._tb is not None and f.suffix in (".json", ".md", ".csv") and f.stat().st_size < 200_000:
                self._tb.add_text(f.name, "    " + f.read_text(errors="replace").replace("\n", "\n    "), self.step)

    def close(self, metrics: Mapping[str, Any] | None = None, artifacts: list[Path] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if metrics:
            self.log_metrics(metrics, prefix="final/")
        self.log_artifacts([f for d in self.log_dirs for f in (d / "train_log.csv", d / "training_curve.png")]
                           + list(artifacts or []))
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


_ACTIVE: ContextVar[Tracker | None] = ContextVar("shopformer_tracker", default=None)


@contextmanager
def session(config: TrackingConfig, name: str, params: Mapping[str, Any]) -> Iterator[Tracker | None]:
    """Track the trainings inside the block as one run (None when no backend is configured). The
    caller may ``close`` the tracker itself with final metrics and artifacts; else it is closed here."""
    if not config.backends:
        yield None
        return
    tracker = Tracker(config, name).start(params)
    token = _ACTIVE.set(tracker)
    try:
        yield tracker
    finally:
        _ACTIVE.reset(token)
        tracker.close()


def _implicit(cfg: Config) -> Tracker | None:
    """A session for a training under ``SHOPFORMER_TRACK`` that nobody opened one for."""
    config = TrackingConfig.from_env()
    if not config.backends:
        return None
    name = f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    tracker = Tracker(config, name).start(json.loads(cfg.to_json()))
    _ACTIVE.set(tracker)
    atexit.register(tracker.close)
    return tracker


def epoch_hook(cfg: Config, hook: EpochHook | None, log_dir: str | Path | None) -> EpochHook | None:
    """``fit``'s per-epoch callback with tracking added (``hook`` unchanged when tracking is off)."""
    tracker = _ACTIVE.get() or _implicit(cfg)
    if tracker is None:
        return hook

    def on_epoch(epoch: int, row: dict) -> None:
        tracker.log_epoch(epoch, row, log_dir)
        if hook is not None:
            hook(epoch, row)

    return on_epoch
