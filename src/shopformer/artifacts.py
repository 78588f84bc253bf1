"""Run directories: safetensors weights + JSON (config, vocab, metrics, manifest). No pickles.

Layout::

    RUN/model.safetensors     model weights (state dict)
    RUN/item_stats.safetensors  training popularity and item -> category (for fallbacks)
    RUN/config.json           the full resolved Config plus the DataSpec it was built for
    RUN/vocab.json            raw id <-> dense id vocabularies
    RUN/metrics.json          evaluation results (validation and test)
    RUN/manifest.json         package version, data fingerprint, created time, file hashes

Every file is written atomically; ``load_run`` checks the weights' SHA-256 against the
manifest before building anything, so a truncated or corrupted file is a clear error, never
a partially loaded model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shopformer import __version__
from shopformer.atomic import atomic_write, atomic_write_text, sha256_file
from shopformer.config import Config, ConfigError, config_from_dict
from shopformer.data.corpus import DataSpec
from shopformer.data.vocab import Vocabs
from shopformer.evaluation.blend import Blend
from shopformer.models import build_model
from shopformer.models.base import SequenceModel

WEIGHTS = "model.safetensors"
ITEM_STATS = "item_stats.safetensors"
BLEND = "blend.safetensors"  # only in runs trained with train.blend that chose a blend


class ArtifactError(RuntimeError):
    """A run directory that is missing files, corrupted or inconsistent."""


@dataclass
class Run:
    model: SequenceModel
    config: Config
    spec: DataSpec
    vocabs: Vocabs
    item_counts: np.ndarray  # (n_items + 1,) training popularity
    item_category: np.ndarray  # (n_items + 1,) dense category id per item, 0 unknown
    metrics: dict
    manifest: dict
    path: Path
    blend: Blend | None = None  # served scores mix the model with a baseline (evaluation/blend.py)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version_id", "unknown"))


def save_run(
    run_dir: str | Path,
    model: SequenceModel,
    config: Config,
    vocabs: Vocabs,
    item_counts: np.ndarray,
    item_category: np.ndarray,
    metrics: dict | None = None,
    data_fingerprint: str = "",
    dataset_dir: str | None = None,
    extra: dict | None = None,
    blend: Blend | None = None,
) -> Path:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run / WEIGHTS, lambda p: save_file(state, str(p)))
    stats = {
        "item_counts": torch.as_tensor(np.asarray(item_counts, dtype=np.int64)),
        "item_category": torch.as_tensor(np.asarray(item_category, dtype=np.int64)),
    }
    atomic_write(run / ITEM_STATS, lambda p: save_file(stats, str(p)))
    cfg = json.loads(config.to_json())
    atomic_write_text(run / "config.json", json.dumps({"config": cfg, "spec": model.spec.to_dict()}, indent=2))
    atomic_write_text(run / "vocab.json", vocabs.to_json())
    write_metrics(run, metrics or {})
    files = [WEIGHTS, ITEM_STATS, "config.json", "vocab.json"]
    if blend is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in blend.state().items()}
        atomic_write(run / BLEND, lambda p: save_file(tensors, str(p)))
        files.append(BLEND)
    else:
        (run / BLEND).unlink(missing_ok=True)
    weights_hash = sha256_file(run / WEIGHTS)
    manifest = {
        "package": "shopformer",
        "package_version": __version__,
        "model": config.model.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_fingerprint": data_fingerprint,
        "dataset_dir": dataset_dir,
        "version_id": f"{config.model.name}-{weights_hash[:12]}",
        "files": {name: sha256_file(run / name) for name in files},
        **({"blend": {**blend.summary(), "counts": blend.counts}}
           if blend is not None else {}),
        **(extra or {}),
    }
    # The manifest goes last: a run directory without one is incomplete by construction.
    atomic_write_text(run / "manifest.json", json.dumps(manifest, indent=2))
    return run


def write_metrics(run_dir: str | Path, metrics: dict) -> None:
    atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2, default=float))


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ArtifactError(f"{path.parent}: missing {path.name} (not a complete run directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: corrupted JSON ({err})") from None


def load_run(run_dir: str | Path, verify: bool = True) -> Run:
    run = Path(run_dir)
    if not run.is_dir():
        raise ArtifactError(f"run directory not found: {run}")
    manifest = _read_json(run / "manifest.json")
    for name, digest in manifest.get("files", {}).items():
        if not (run / name).exists():
            raise ArtifactError(f"{run}: missing {name}")
        if verify and sha256_file(run / name) != digest:
            raise ArtifactError(f"{run / name}: checksum mismatch (corrupted or modified after saving)")
    raw = _read_json(run / "config.json")
    try:
        config = config_from_dict(raw["config"], source=str(run / "config.json"))
        spec = DataSpec(**raw["spec"])
    except (ConfigError, KeyError, TypeError) as err:
        raise ArtifactError(f"{run / 'config.json'}: {err}") from None
    vocabs = Vocabs.from_json((run / "vocab.json").read_text())
    try:
        state = load_file(str(run / WEIGHTS))
        stats = load_file(str(run / ITEM_STATS))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{run}: cannot read weights: {err}") from None
    model = build_model(config.model, spec, task=config.task)  # task heads, if any, load with the weights
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ArtifactError(f"{run / WEIGHTS}: weights do not match the config: {err}") from None
    model.eval()
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    blend = None
    if "blend" in manifest:
        try:
            # runs saved before stop 29 name no counts: theirs were the training events
            # runs saved before stop 40 blend one baseline and name no weights
            names = list(manifest["blend"].get("weights", [manifest["blend"]["baseline"]]))
            blend = Blend.from_state(names, load_file(str(run / BLEND)), manifest["blend"].get("counts", "training"))
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise ArtifactError(f"{run / BLEND}: cannot read the blend: {err}") from None
    return Run(
        model=model,
        config=config,
        spec=spec,
        vocabs=vocabs,
        item_counts=stats["item_counts"].numpy(),
        item_category=stats["item_category"].numpy(),
        metrics=metrics,
        manifest=manifest,
        path=run,
        blend=blend,
    )
