"""Start service processes fast for the chaos bench: a pre-imported parent ("zygote") forks them.

A cold ``python -m shopformer.cli serve`` spends ~15 s (≈30 s on a loaded 2-core box) importing
torch, FastAPI and the rest before it opens the store; fifty ``kill -9`` per store would be mostly
imports. Here one parent process imports everything once and, per start, ``fork``s a child that
runs exactly the CLI's ``serve`` command (``shopformer.cli.app``, same settings from the same
environment variables, same lifespan: ledger, store, model load). The child is a real, separate
service process: ``kill -9`` ends it with no clean-up, like any other.

The parent starts no thread before forking (nothing imported here runs one at import time) and
reaps children automatically (SIGCHLD ignored). Protocol on stdin/stdout: one JSON line
``{"argv": [...], "env": {...}, "log": path}`` in, one line with the child's pid out.

    ForkServer() -> .spawn(argv, env, log) -> pid;  ForkedServer(...) mirrors tests' ServerProcess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_support import free_port, wait_ready  # noqa: E402


def zygote() -> None:
    """The parent: import once, then fork one service per request line."""
    import redis.asyncio  # noqa: F401 - preloaded for the children
    import uvicorn  # noqa: F401

    import shopformer.serving.app  # noqa: F401
    import shopformer.serving.store  # noqa: F401
    from shopformer.cli.app import app

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the service process
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.clear()
            os.environ.update(req["env"])
            code = 0
            try:
                app(req["argv"], prog_name="shopformer", standalone_mode=False)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - report and exit like the CLI would
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)


class ForkServer:
    """The zygote as a child process of the bench."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("fork server did not start")

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ForkedServer:
    """``shopformer serve RUN_DIR`` forked from a :class:`ForkServer`; the interface of ServerProcess."""

    def __init__(self, forks: ForkServer, run_dir: Path, store_url: str, api_key: str, log_path: Path,
                 ledger_path: Path | None = None) -> None:
        self.forks, self.run_dir, self.store_url, self.api_key = forks, run_dir, store_url, api_key
        self.log_path = log_path
        self.ledger_path = ledger_path or Path(tempfile.mkdtemp()) / "forget_ledger.jsonl"
        self.port = free_port()
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ForkedServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFORMER_")}
        env.update(SHOPFORMER_FORGET_LEDGER=str(self.ledger_path), SHOPFORMER_API_KEY=self.api_key)
        argv = ["serve", str(self.run_dir), "--port", str(self.port), "--store", self.store_url,
                "--log-level", "warning"]
        self.pid = self.forks.spawn(argv, env, self.log_path)
        pid = self.pid
        wait_ready(self.url, lambda: None if _alive(pid) else "forked server exited", lambda: self.stop(hard=True),
                   timeout, lambda: self.log_path.read_text(errors="replace")[-2000:], poll=0.05)
        return self

    def stop(self, hard: bool = False) -> None:
        """SIGKILL (``kill -9``) or SIGTERM, then wait until the process is gone."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline += 30
            time.sleep(0.02)


if __name__ == "__main__":
    zygote()
