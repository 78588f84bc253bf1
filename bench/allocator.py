"""The CLI's malloc policy (training/allocator.py) against glibc's own and stop 42's first form, on the
blend search's work: per batch the model's and five baselines' (rows, items) scores are standardised, then
``--blends`` mixes are ranked, at Taobao stream-slice size (75,385 items, 256 rows, one thread).

    .venv/bin/python bench/allocator.py [--batches 12] [--blends 20] [--repeat 2]

Each policy runs in its own process (``mallopt`` is process-wide), the policies alternating ``--repeat``
times so load hits all of them; per policy the median wall time, the largest peak RSS and the median count
of minor page faults. One JSON line appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import median

from common import RESULTS, machine, provenance

POLICIES = {  # name -> keep_freed_memory's arguments (None: glibc's own policy)
    "glibc": None,
    "mmap 1 GiB, trim 2 GiB (stop 42's first form)": {"trim": (1 << 31) - 1, "pad": 0},
    "mmap 1 GiB, trim + top pad 256 MiB (the CLI's)": {},
}

CHILD = """
import json, resource, sys, time, torch
from shopformer.evaluation.blend import standardise
from shopformer.evaluation.metrics import target_ranks
from shopformer.training.allocator import keep_freed_memory
policy, items, rows, batches, blends = json.loads(sys.argv[1])
if policy is not None:
    assert keep_freed_memory("", **policy)
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
start = time.perf_counter()
for _ in range(batches):
    raw, targets = torch.randn(rows, items, generator=g), torch.randint(1, items, (rows,), generator=g)
    z_model, z = standardise(raw), [standardise(torch.randn(rows, items, generator=g)) for _ in range(5)]
    for b in range(blends):  # a blend of the model with two baselines, then its targets' ranks
        target_ranks(0.9 * z_model + 0.05 * z[b % 5] + 0.05 * z[(b + 1) % 5], targets)
    del raw, z_model, z
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": time.perf_counter() - start, "peak_rss_mb": use.ru_maxrss // 1024, "minflt": use.ru_minflt}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=75_385)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--blends", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "allocator.jsonl")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in POLICIES}
    for _ in range(args.repeat):
        for name, policy in POLICIES.items():
            arg = json.dumps([policy, args.items, args.rows, args.batches, args.blends])
            out = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout))
    line = {**provenance(__file__), "items": args.items, "rows": args.rows,
            "batches": args.batches, "blends": args.blends, "repeat": args.repeat, "machine": machine(),
            "policies": {name: {"s": round(median(r["s"] for r in rs), 1),
                                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                                "minflt": int(median(r["minflt"] for r in rs))} for name, rs in runs.items()}}
    print(json.dumps(line), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
