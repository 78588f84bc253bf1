"""Real processes for tests and benchmarks: a service subprocess, a redis-server, a model.

Tests and ``bench/serve_load.py`` run the service as a separate process talking real HTTP,
and Redis as a real ``redis-server`` in a temporary directory (never a mock). The synthetic run
directory has random weights: serving latency does not depend on training.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from shopformer.artifacts import save_run
from shopformer.config import Config, ModelConfig, TaskConfig
from shopformer.data.corpus import DataSpec
from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs
from shopformer.models import build_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_run(
    out: str | Path,
    items: list[str],
    model: ModelConfig | None = None,
    behaviours: tuple[str, ...] = ("pv", "cart", "fav", "buy"),
    seed: int = 0,
    item_vectors: np.ndarray | None = None,
    task: TaskConfig | None = None,
) -> Path:
    """A complete run directory with random weights (optionally given item vectors, task heads
    whose target is the last behaviour)."""
    torch.manual_seed(seed)
    cfg = Config(model=model or ModelConfig(), task=task or TaskConfig())
    n = len(items)
    spec = DataSpec(n_items=n, n_behaviours=len(behaviours), n_categories=0, has_time=True)
    net = build_model(cfg.model, spec, task=cfg.task, target_behaviour=len(behaviours))
    if item_vectors is not None:
        with torch.no_grad():
            net.item_emb.weight[1 : n + 1] = torch.as_tensor(item_vectors, dtype=torch.float32)
    pad = (PAD_TOKEN,)
    vocabs = Vocabs(Vocab(pad), Vocab(pad + tuple(items)), Vocab(pad + tuple(behaviours)), Vocab(pad))
    counts = np.concatenate([[0], np.arange(n, 0, -1)])  # frequency-sorted like a real vocabulary
    return save_run(out, net, cfg, vocabs, counts, np.zeros(n + 1, dtype=np.int64), metrics={"synthetic": True})


class RedisServer:
    """``redis-server`` on a free port, data in ``workdir``, durable (AOF, fsync always)."""

    def __init__(self, workdir: str | Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server binary not found")
        self.exe, self.dir = exe, Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        client.close()
        return self

    def stop(self, hard: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


def wait_ready(url: str, exited: Callable[[], str | None], kill: Callable[[], object], timeout: float,
               log_tail: Callable[[], str], poll: float = 0.1) -> None:
    """Poll ``url``/readyz until it answers 200. ``exited()`` names why the process is gone (None while
    it runs): raised at once with the log's tail; after ``timeout`` seconds ``kill()`` and raise."""
    deadline = time.monotonic() + timeout
    while True:
        if (why := exited()) is not None:
            raise RuntimeError(f"{why}; log: {log_tail()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            kill()
            raise TimeoutError(f"server not ready after {timeout}s; log: {log_tail()}")
        time.sleep(poll)


class ServerProcess:
    """``python -m shopformer.cli serve RUN_DIR`` as a child process; ready when /readyz says so."""

    def __init__(self, run_dir: str | Path, store_url: str, api_key: str | None = "test-key",
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, ledger_path: str | Path | None = None) -> None:
        self.run_dir, self.store_url, self.api_key = Path(run_dir), store_url, api_key
        self.port = free_port()
        self.log_path = Path(log_path) if log_path else None
        # Each server its own deletion ledger (never one in the working directory shared by tests).
        self.ledger_path = Path(ledger_path) if ledger_path else Path(tempfile.mkdtemp()) / "forget_ledger.jsonl"
        self.extra_args, self.extra_env = extra_args, env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFORMER_")}
        env["SHOPFORMER_FORGET_LEDGER"] = str(self.ledger_path)
        env.update(self.extra_env)
        if self.api_key is not None:
            env["SHOPFORMER_API_KEY"] = self.api_key
        cmd = [sys.executable, "-m", "shopformer.cli", "serve", str(self.run_dir), "--port", str(self.port),
               "--store", self.store_url, "--log-level", "warning", *self.extra_args]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_ready(self.url, lambda: None if proc.poll() is None else f"server exited with {proc.returncode}",
                   lambda: self.stop(hard=True), timeout, self.log_tail)
        return self

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.exists() else ""

    def stop(self, hard: bool = False) -> int | None:
        """SIGTERM (graceful) or SIGKILL (``kill -9``); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code, self.proc = self.proc.returncode, None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
