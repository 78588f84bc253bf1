"""Time `prepare` on the full Taobao UserBehavior head (84,287 rows) and print one JSON line.

    .venv/bin/python bench/prepare.py [--data ../shared/data/taobao_userbehavior/UserBehavior_head.csv] [--repeat 3]

Prints ``{"rows", "seconds", "rows_per_second", "peak_rss_mb", ...}``; ``seconds`` is the best of
``--repeat`` runs of the whole `prepare` (read, validate, sort, dedup, encode, write). When the
shared data is absent it prints a JSON line with ``"skipped"`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from common import provenance

from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior_head.csv"
COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def run(data: Path, repeat: int) -> dict[str, object]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            t0 = time.perf_counter()
            result = prepare([data], Path(tmp) / f"ds{i}", IngestOptions(columns=COLUMNS))
            times.append(time.perf_counter() - t0)
    rows = int(result.stats["rows_read"])  # type: ignore[call-overload]
    best = min(times)
    return {
        "data": str(data),
        "rows": rows,
        "events": result.stats["events"],
        "seconds": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "rows_per_second": round(rows / best),
        "peak_rss_mb": peak_rss_mb(),
        "polars": pl.__version__,
        "polars_threads": pl.thread_pool_size(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(json.dumps({**provenance(__file__, argv), "skipped": f"data not found: {args.data}"}))
        return
    print(json.dumps({**provenance(__file__, argv), **run(args.data, args.repeat)}))


if __name__ == "__main__":
    main()
