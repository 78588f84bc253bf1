"""What text decoding costs `prepare`: a UTF-8 file (checked, read in place), the same file with one
invalid byte (transcoded, one row quarantined) and a GBK copy read with ``--encoding gbk``.

    .venv/bin/python bench/ingest_encoding.py [--data ../shared/data/taobao_userbehavior/UserBehavior_head.csv]
        [--repeat 3] [--results bench/results]

Prints one JSON line (best of ``--repeat`` seconds per case, the UTF-8 validity check alone, rows);
with ``--results`` also writes it to ``RESULTS/ingest_encoding.json``. Falls back to the bundled
Taobao slice when the shared data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import polars as pl
from common import provenance

from shopformer.data.decoding import _is_valid
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior_head.csv"
FALLBACK = ROOT / "data" / "demo" / "taobao_head300.csv"
COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")


def best(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return round(min(times), 4)


def run(data: Path, repeat: int) -> dict[str, object]:
    raw = data.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        one_bad = t / "one_bad.csv"
        cut = raw.index(b"\n", len(raw) // 2) + 1
        one_bad.write_bytes(raw[:cut] + b"\xff" + raw[cut:])  # one bad byte in the middle
        gbk = t / "gbk.csv"
        gbk.write_bytes(raw.decode("utf-8").encode("gbk"))
        cases = {"utf8": (data, "utf-8"), "utf8_one_bad_byte": (one_bad, "utf-8"), "gbk": (gbk, "gbk")}
        seconds: dict[str, float] = {}
        rejected: dict[str, object] = {}
        for name, (path, enc) in cases.items():
            out = t / f"ds_{name}"

            def once(path: Path = path, enc: str = enc, out: Path = out, name: str = name) -> None:
                res = prepare([path], out, IngestOptions(columns=COLUMNS, encoding=enc), overwrite=True)
                rejected[name] = res.stats["rows_rejected"]

            seconds[name] = best(repeat, once)
        check = best(repeat, lambda: _is_valid(str(data), "utf-8"))
    rows = raw.count(b"\n")
    return {
        "data": str(data),
        "bytes": len(raw),
        "rows": rows,
        "seconds": seconds,
        "rows_rejected": rejected,
        "utf8_check_seconds": check,
        "utf8_check_mb_per_s": round(len(raw) / check / 1e6) if check else None,
        "polars": pl.__version__,
        "cpus": os.cpu_count(),
        "note": "best of --repeat; the machine may have been shared with other jobs",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    data = args.data if args.data.is_file() else FALLBACK
    line = json.dumps({**provenance(__file__, argv), **run(data, args.repeat)})
    print(line)
    if args.results is not None:
        (args.results / "ingest_encoding.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
