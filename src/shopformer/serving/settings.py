"""Service settings: environment variables ``SHOPFORMER_*`` (or CLI flags, which win).

Defaults suit a small (2-core) box with zero set-up: an SQLite state file in the working
directory, one torch thread for inference so the other core keeps serving HTTP, and no write
access until a key is configured (a server that accepts anonymous writes is never the accident).

Keys are scoped: ``ingest_key`` (POST /v1/events), ``admin_key`` (DELETE /v1/users, reload) and an
optional ``read_key`` (recommendations, similar items, /metrics; reads are open when unset).
``api_key`` is the fallback for the ingest and admin scopes when their own key is unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LEDGER_NAME = "shopformer_forget_ledger.jsonl"


class ServeSettings(BaseSettings):
    # extra="ignore": other tools may define their own SHOPFORMER_* variables.
    model_config = SettingsConfigDict(env_prefix="SHOPFORMER_", extra="ignore", frozen=True)

    run_dir: Path | None = None  # the run directory served at start-up
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    access_log: bool = False  # per-request log lines cost ~10% throughput; /metrics has the counts

    # Security: bearer tokens per scope. A scope without a key answers 403 (reads: open).
    api_key: SecretStr | None = None  # fallback for ingest_key and admin_key
    ingest_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    read_key: SecretStr | None = None
    # /v1/admin/reload only loads run directories under this folder (default: the served run's parent).
    reload_root: Path | None = None
    # Append-only deletion ledger (hashed user ids): replays of forgotten users' events are refused,
    # and `shopformer prepare --forget-ledger` drops their events from the next training data.
    # Default: shopformer_forget_ledger.jsonl beside the SQLite state file (working directory for Redis).
    forget_ledger: Path | None = None
    # Pseudonymous user ids (data/pseudonym.py, the HMAC of `prepare --pseudonymise-users`): with
    # pseudonymise_users (or a key file) the store, ledger, served-list log and logs hold only
    # HMAC(key, user id); requests keep sending raw ids. Key: this file, else SHOPFORMER_PSEUDONYM_KEY.
    pseudonymise_users: bool = False
    pseudonym_key_file: Path | None = None

    # State store: "sqlite:///path/to/state.db" (default, embedded) or "redis://host:port/db".
    store_url: str = "sqlite:///shopformer_state.db"
    dedup_ttl_s: int = Field(24 * 3600, ge=60)  # how long an event_id is remembered (bounds the records)
    aof_rewrite_interval_s: float = Field(60.0, ge=0)  # Redis: at most one AOF rewrite after deletions per interval
    retry_after_s: int = Field(1, ge=1)  # Retry-After of a 503 (store outage, reload race)

    # Web dashboard under /ui (serving/dashboard, docs/dashboard.md); off unless asked for.
    dashboard: bool = False
    dashboard_registry: Path | None = None  # model registry of the version history (default: found from run_dir)
    dashboard_insights: Path | None = None  # trends / forecast / churn file written by `shopformer insights`

    # Limits.
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_events_per_batch: int = Field(1000, ge=1)
    max_history: int = Field(1000, ge=1)  # events in an ad-hoc POST /v1/recommendations history
    max_k: int = Field(200, ge=1)

    # Inference.
    threads: int = Field(1, ge=1)  # torch / FAISS intra-op threads (1 on a 2-core box: HTTP gets the other)
    inference_thread: bool = False  # forward passes on a separate thread instead of the event loop (see engine.py)
    batch_window_us: int = Field(0, ge=0)  # extra wait to grow a micro-batch; 0 = natural batching only
    max_batch_size: int = Field(64, ge=1)
    faiss_threshold: int = Field(300_000, ge=1)  # catalogues at least this large use a FAISS IVF index
    faiss_nprobe: int = Field(32, ge=1)
    # User vectors by PyTorch, or by the run's exported encoder.onnx with onnxruntime (`shopformer export RUN
    # --format onnx`; models scored by user vector x item vectors only). docs/scale-serving.md has both measured.
    backend: Literal["torch", "onnx"] = "torch"

    # Scale-out (docs/scale-serving.md): worker processes on one port (share a Redis store), and load shedding:
    # past max_in_flight requests in a worker, /v1 requests are answered 503 + Retry-After at once (0: no bound).
    # An accepted request waits about max_in_flight x its CPU cost (~3 ms for Beauty): 4 bounds that wait to tens
    # of ms (bench/results/scale_serving_lean.json measures 1, 2, 4, 8 and no bound).
    workers: int = Field(1, ge=1)
    max_in_flight: int = Field(4, ge=0)
    # ?explain=true: occlude the last N events only (0: the model's whole window); 10 keeps the 12k-item Beauty
    # model's explain p99 under 30 ms of CPU (bench/results/explain_latency.json), same deletion gap there
    explain_recent: int = Field(10, ge=0)

    # Online hit rate (serving/online.py): served lists logged in the store, bounded and deleted with the user.
    served_log: bool = True
    online_window_s: int = Field(1800, ge=1)  # a next event counts for lists served at most this long before it
    served_keep: int = Field(5, ge=1)  # lists kept per user until the user's next event
    served_retention_s: int = Field(24 * 3600, ge=60)  # lists older than this are dropped
    # Drift: the training data set directory of the served run, when not beside it in a registry version.
    drift_reference: Path | None = None
    # Follow a registry: reload when run_dir (e.g. registry/current, a symlink) points elsewhere (serving/follow.py).
    watch_run_dir: bool = False
    watch_interval_s: float = Field(5.0, gt=0)

    def scope_key(self, scope: str) -> SecretStr | None:
        """The key of a scope ("ingest", "admin", "read"); ingest and admin fall back to api_key."""
        own: SecretStr | None = getattr(self, f"{scope}_key")
        return own if own is not None or scope == "read" else self.api_key

    def effective_reload_root(self) -> Path | None:
        """The configured reload root, else the folder holding the served run."""
        if self.reload_root is not None:
            return self.reload_root.resolve()
        return self.run_dir.resolve().parent if self.run_dir is not None else None

    def effective_forget_ledger(self) -> Path:
        """The configured ledger, else ``shopformer_forget_ledger.jsonl`` beside the SQLite state file."""
        if self.forget_ledger is not None:
            return self.forget_ledger
        if self.store_url.startswith("sqlite:///") and len(self.store_url) > len("sqlite:///"):
            return Path(self.store_url[len("sqlite:///"):]).parent / LEDGER_NAME
        return Path(LEDGER_NAME)
