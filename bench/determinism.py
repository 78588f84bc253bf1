"""Same seed, different machine load: the same numbers (budgets are epochs, never minutes).

    .venv/bin/python bench/determinism.py --epochs 3 --hogs 2      # ~2 x the demo's time for 3 epochs

Runs ``shopformer demo --epochs N`` twice in fresh scratch folders: once on the machine as it is,
once with ``--hogs`` busy-loop processes competing for every core. Every value of the two
``metrics.json`` files is compared (NaN equals NaN), except wall-clock fields (``*seconds*``,
``*minutes*``) and the scratch paths (``dataset``); so are the tables a user reads (``report.md``,
its paths aside) and the saved weights (sha256 of ``model.safetensors``), and the largest absolute
difference of any number is reported. One JSON line, with the command, goes to
stdout and to bench/results/determinism.json. Exit code 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, machine, provenance

from shopformer.atomic import atomic_write_text, sha256_file

CLOCK_FIELDS = ("second", "minute")
PATH_FIELDS = ("dataset",)


def _spin() -> None:  # a busy loop: one core's worth of competing load
    while True:
        pass


def flat(d: object, prefix: str = "") -> dict[str, object]:
    """Every leaf of a JSON value by its dotted path (wall-clock fields left out)."""
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            if not any(c in str(k) for c in CLOCK_FIELDS) and k not in PATH_FIELDS:
                out.update(flat(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list):
        return {k: v for i, x in enumerate(d) for k, v in flat(x, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): d}


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def run_demo(out: Path, epochs: int) -> tuple[dict, str, float, str]:
    exe = ROOT / ".venv" / "bin" / "shopformer"
    cmd = [str(exe) if exe.exists() else "shopformer", "demo", "--out", str(out), "--epochs", str(epochs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text().replace(str(out), "RUN")
    return metrics, sha256_file(out / "model" / "model.safetensors"), seconds, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-loop processes in the loaded run")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        as_is = run_demo(Path(tmp) / "as_is", args.epochs)
        hogs = [mp.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
        for h in hogs:
            h.start()
        try:
            loaded = run_demo(Path(tmp) / "loaded", args.epochs)
        finally:
            for h in hogs:
                h.terminate()
    a, b = flat(as_is[0]), flat(loaded[0])
    differ = sorted(k for k in a.keys() | b.keys() if not same(a.get(k), b.get(k)))
    gaps = [abs(float(a[k]) - float(b[k])) for k in differ  # type: ignore[arg-type]
            if isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))]
    line = {
        **provenance(__file__, argv),
        "epochs": args.epochs,
        "hogs": args.hogs,
        "seconds": {"as_is": round(as_is[2], 1), "loaded": round(loaded[2], 1)},
        "slowdown": round(loaded[2] / as_is[2], 2),
        "numbers_compared": len(a),
        "numbers_differing": len(differ),
        "differing": differ[:20],
        "max_abs_difference": max(gaps, default=0.0),
        "report_md_identical": as_is[3] == loaded[3],
        "weights_identical": as_is[1] == loaded[1],
        "identical": not differ and as_is[1] == loaded[1],
        "machine": machine(),
    }
    text = json.dumps(line, indent=1)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "determinism.json", text + "\n")
    return 0 if line["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
