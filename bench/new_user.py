"""A new user's first run, exactly as typed at the shell: ``shopformer prepare`` then ``shopformer train``
with no config (configs/default.toml + the data rule) on a log never used to tune anything.

    .venv/bin/python bench/new_user.py                 # YOOCHOOSE 100k (../shared), one thread
    .venv/bin/python bench/new_user.py --threads 2

Writes ``bench/results/new_user_yoochoose.json``: the warnings the CLI printed (a baseline that beats the
model overall, or on repeat or explore targets), validation and test NDCG@10 / HR@10 of every system with
the repeat / explore split, and the fit summary. The run directory stays under ``out/new_user`` for a look
at ``report.md`` / ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from common import RESULTS, ROOT, provenance, skip_if_missing
from defaults import SOURCES

FILES, OPTIONS = SOURCES["yoochoose"]  # the files and column mapping bench/defaults.py uses
CLI = ROOT / ".venv" / "bin" / "shopformer"


def summary(m: dict) -> dict:
    """NDCG@10 / HR@10 overall and NDCG@10 on the repeat and explore targets (their count and share)."""
    out = {k: m[k] for k in ("ndcg@10", "hr@10") if k in m}
    for part in ("repeat", "explore"):
        if part in m:
            out[part] = {k: m[part].get(k) for k in ("n", "share", "ndcg@10")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "new_user")
    args = ap.parse_args()
    skip_if_missing(FILES[0], "new_user")
    shutil.rmtree(args.work, ignore_errors=True)
    ds, run = args.work / "ds", args.work / "run"
    maps = [a for canonical, source in (OPTIONS.mapping or {}).items() for a in ("--map", f"{canonical}={source}")]
    subprocess.run([str(CLI), "prepare", *map(str, FILES), "-o", str(ds), *maps], check=True)
    subprocess.run([str(CLI), "train", str(ds), "-o", str(run), "--set", f"train.threads={args.threads}"], check=True)
    m = json.loads((run / "metrics.json").read_text())
    record = {
        **provenance(__file__),
        "data": "yoochoose_rsc15_100k (never used to tune anything)",
        "config": "default (no --config: configs/default.toml + the data rule)",
        "warnings": m["warnings"],
        "valid": summary(m["valid"]),
        "valid_baselines": {name: summary(v) for name, v in m["valid_baselines"].items()},
        "test": {name: summary(v) for name, v in m["test"].items()},
        "fit": {k: m["fit"].get(k) for k in ("epochs", "best_epoch", "stopped_by", "wall_seconds")},
    }
    out = RESULTS / "new_user_yoochoose.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("warnings", "valid", "fit")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
