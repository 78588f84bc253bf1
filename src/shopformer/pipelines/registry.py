"""Model registry: a directory of immutable versions and an atomically switched ``current`` pointer.

Layout::

    REGISTRY/current.json          {"version": "v0003", "history": ["v0001", "v0002"], "switched": ...}
    REGISTRY/current -> versions/v0003/model   symlink, for `shopformer serve REGISTRY/current`
    REGISTRY/versions/v0003/model/     the run directory (artifacts.save_run: weights + JSON, hashed)
    REGISTRY/versions/v0003/dataset/   the events it was trained on (the next retrain's window starts here)
    REGISTRY/versions/v0003/version.json  the version manifest: parent, data window, event counts,
                                       config, validation metrics, gate comparison, drift, status
    REGISTRY/.lock                     held (flock) by whoever adds or switches versions

A version is written under a temporary name inside REGISTRY and renamed into ``versions/`` only
once complete, so nothing half-written is ever listed, let alone current. ``current.json`` is
replaced atomically (``atomic.py``) and is the one source of truth; the symlink follows it. Only
``status`` in ``version.json`` ever changes after the rename (candidate -> promoted / rejected,
with the reason and a dated history); the model and data files never do, so a rollback
restores exactly the previous answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shopformer.atomic import atomic_write_text, fsync_dir

STATUSES = ("candidate", "promoted", "rejected")
VERSION_FILE = "version.json"
POINTER = "current.json"


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown version, rejected candidate, no current)."""


class RegistryLocked(RuntimeError):
    """Another process holds the registry lock (a retrain is running)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(self, root: str | Path, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            (self.root / "versions").mkdir(parents=True, exist_ok=True)
        elif not (self.root / "versions").is_dir():
            raise RegistryError(f"{self.root}: not a model registry (no versions/ folder); "
                                "start one with `shopformer models add REGISTRY RUN`")

    # ---- reading ------------------------------------------------------------------------------

    def version_dir(self, version: str) -> Path:
        path = self.root / "versions" / version
        if not (path / VERSION_FILE).exists():
            known = ", ".join(self.version_ids()) or "none"
            raise RegistryError(f"{self.root}: no version {version!r} (known: {known})")
        return path

    def model_dir(self, version: str) -> Path:
        return self.version_dir(version) / "model"

    def version_ids(self) -> list[str]:
        versions = self.root / "versions"
        return sorted(p.name for p in versions.iterdir() if (p / VERSION_FILE).exists())

    def read(self, version: str) -> dict:
        path = self.version_dir(version) / VERSION_FILE
        try:
            return dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise RegistryError(f"{path}: corrupted JSON ({err})") from None

    def pointer(self) -> dict:
        path = self.root / POINTER
        if not path.exists():
            return {"version": None, "history": []}
        try:
            return dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise RegistryError(f"{path}: corrupted JSON ({err})") from None

    def current(self) -> str | None:
        version = self.pointer().get("version")
        return None if version is None else str(version)

    def require_current(self) -> str:
        version = self.current()
        if version is None:
            raise RegistryError(f"{self.root}: no current version; add one with `shopformer models add REGISTRY RUN`")
        return version

    # ---- writing ------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking: a second holder gets ``RegistryLocked`` at once. The kernel drops
        the lock when its process dies, so a killed retrain never leaves a stale lock behind."""
        path = self.root / ".lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RegistryLocked(f"{self.root} is locked by {holder} (a retrain is running)") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} since {_now()}")
            f.flush()
            for stale in self.root.glob(".v*.tmp"):  # left by a killed builder: nobody else builds now
                shutil.rmtree(stale, ignore_errors=True)
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        """Short, blocking: serialises pointer switches (promote, rollback) without waiting for a
        retrain, which holds the other lock for its whole run."""
        with open(self.root / ".pointer.lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def next_id(self) -> str:
        ids = [int(v[1:]) for v in self.version_ids() if v[1:].isdigit()]
        return f"v{max(ids, default=0) + 1:04d}"

    def add_version(self, build: Callable[[Path, str], dict], version: str | None = None) -> str:
        """Build a version in a temporary folder (``build(tmp, version_id)`` writes model/ and
        dataset/ and returns the manifest), then rename it into ``versions/`` (call under ``lock``)."""
        version = version or self.next_id()
        final = self.root / "versions" / version
        if final.exists():
            raise RegistryError(f"{final} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=self.root))
        try:
            manifest = build(tmp, version)
            manifest = {"version": version, "created": _now(), **manifest}
            manifest.setdefault("status", "candidate")
            manifest.setdefault("status_history", [{"status": manifest["status"], "at": manifest["created"],
                                                    "reason": manifest.get("reason", "")}])
            atomic_write_text(tmp / VERSION_FILE, json.dumps(manifest, indent=2, default=float))
            tmp.chmod(0o755)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def set_status(self, version: str, status: str, reason: str = "") -> dict:
        if status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        manifest = self.read(version)
        manifest["status"], manifest["reason"] = status, reason
        manifest.setdefault("status_history", []).append({"status": status, "at": _now(), "reason": reason})
        atomic_write_text(self.version_dir(version) / VERSION_FILE, json.dumps(manifest, indent=2, default=float))
        return manifest

    def _switch(self, version: str, history: list[str]) -> None:
        """The commit point: current.json replaced atomically, then the convenience symlink."""
        pointer = {"version": version, "history": history, "switched": _now()}
        atomic_write_text(self.root / POINTER, json.dumps(pointer, indent=2))
        link = self.root / "current"
        for stale in self.root.glob(".current.*.tmp"):  # a killed switcher's (we hold the pointer lock)
            stale.unlink(missing_ok=True)
        tmp = self.root / f".current.{os.getpid()}.tmp"
        os.symlink(os.path.join("versions", version, "model"), tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def promote(self, version: str, reason: str = "promoted by hand") -> None:
        """Make ``version`` current; a rejected version never becomes current."""
        with self._pointer_lock():
            self._promote(version, reason)

    def _promote(self, version: str, reason: str) -> None:
        manifest = self.read(version)
        if manifest.get("status") == "rejected":
            raise RegistryError(f"{version} was rejected ({manifest.get('reason', 'no reason')}); "
                                "it cannot become current")
        if not (self.model_dir(version) / "manifest.json").exists():
            raise RegistryError(f"{version}: incomplete model directory")
        pointer = self.pointer()
        current = pointer.get("version")
        if current == version:
            raise RegistryError(f"{version} is already current")
        history = [str(v) for v in pointer.get("history", [])] + ([str(current)] if current else [])
        if manifest.get("status") != "promoted":
            self.set_status(version, "promoted", reason)
        self._switch(version, history)

    def rollback(self, version: str | None = None) -> str:
        """Make the previously current version (or ``version``, which must have been current
        before) current again; returns it."""
        pointer = self.pointer()
        history = [str(v) for v in pointer.get("history", [])]
        if not history:
            raise RegistryError(f"{self.root}: nothing to roll back to (no earlier current version)")
        target = history[-1] if version is None else version
        if target not in history:
            raise RegistryError(f"{target} was never current before; roll back to one of: {', '.join(history)}")
        self.version_dir(target)
        self._switch(target, history[: history.index(target)])
        return target

    def versions(self) -> list[dict]:
        current = self.current()
        return [{**self.read(v), "current": v == current} for v in self.version_ids()]
