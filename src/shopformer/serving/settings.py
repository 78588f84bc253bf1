"""Service settings: environment variables ``SHOPFORMER_*`` (or CLI flags, which win).

Defaults suit a small (2-core) box with zero set-up: an SQLite state file in the working
directory, one torch thread for inference so the other core keeps serving HTTP, and no write
access until an API key is configured (a server that accepts anonymous writes is never the
accident).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    # extra="ignore": other tools may define their own SHOPFORMER_* variables.
    model_config = SettingsConfigDict(env_prefix="SHOPFORMER_", extra="ignore", frozen=True)

    run_dir: Path | None = None  # the run directory served at start-up
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    access_log: bool = False  # per-request log lines cost ~10% throughput; /metrics has the counts

    # Security: bearer token for writes, deletes and admin. None: those endpoints answer 403.
    api_key: SecretStr | None = None
    # When set, /v1/admin/reload only accepts run directories under this folder.
    reload_root: Path | None = None

    # State store: "sqlite:///path/to/state.db" (default, embedded) or "redis://host:port/db".
    store_url: str = "sqlite:///shopformer_state.db"
    dedup_ttl_s: int = Field(7 * 24 * 3600, ge=60)  # how long an event_id is remembered

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
