"""The published OpenAPI document is the truth: a seeded, bounded schemathesis run against a live
server (every check: no 5xx, schema-valid requests accepted, schema-violating ones refused,
responses conform). Skipped when schemathesis is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import ServerProcess, synthetic_run

from shopformer.config import ModelConfig, TaskConfig

KEY = "fuzz-key"


def schemathesis_exe() -> str | None:
    local = Path(sys.executable).with_name("schemathesis")
    return str(local) if local.exists() else shutil.which("schemathesis")


@pytest.mark.skipif(schemathesis_exe() is None, reason="schemathesis not installed (pip install -e .[dev])")
def test_schemathesis_finds_no_mismatch(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "runs" / "a", [f"i{i}" for i in range(40)],
                        ModelConfig(dim=16, layers=1, heads=1, max_len=20), task=TaskConfig(kind="multi"))
    env = {"SHOPFORMER_MAX_EVENTS_PER_BATCH": "20", "SHOPFORMER_MAX_HISTORY": "30", "SHOPFORMER_MAX_K": "25",
           "SHOPFORMER_MAX_BODY_BYTES": "65536"}
    with ServerProcess(run, f"sqlite:///{tmp_path / 'state.db'}", api_key=KEY, log_path=tmp_path / "server.log",
                       env=env) as server:
        cmd = [schemathesis_exe() or "schemathesis", "run", f"{server.url}/openapi.json",
               "-H", f"Authorization: Bearer {KEY}", "--checks", "all", "--max-examples", "25", "--seed", "12",
               "--workers", "1", "--phases", "coverage,fuzzing", "--no-color"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache: not here
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
        assert "Traceback" not in server.log_tail(1_000_000)
