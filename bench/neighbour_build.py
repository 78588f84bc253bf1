"""Memory of building neighbour attributes (``text.neighbours``) on Amazon Beauty: rows built sparse.

    .venv/bin/python bench/neighbour_build.py

``neighbour_text`` builds the item x column rows as a CSR array and ``TextFusion`` splits them into its
dense and sparse parts without an items x columns block (since stop 37; before, both held one: 1,024
columns on Beauty peaked at 102 MB of numpy memory, every item as a column at 1,117 MB). For 1,024 and
4,096 columns and every item held by 2+ items, one thread: the peak of Python-tracked (numpy / scipy)
memory while building the rows and the module, the rows' nonzeros and the seconds it took.
Writes bench/results/neighbour_build.json.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import torch
from common import RESULTS, SHARED, load_or_prepare, machine, provenance, skip_if_missing

from shopformer.config import Config
from shopformer.data.corpus import make_split
from shopformer.data.ingest import IngestOptions
from shopformer.models.text import TextFusion, neighbour_text

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"


def main() -> None:
    skip_if_missing(BEAUTY, "neighbour_build")
    torch.set_num_threads(1)
    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    split = make_split(ds, Config())
    rows = {}
    for columns in (1024, 4096, ds.spec.n_items):
        tracemalloc.start()
        t = time.perf_counter()
        text = neighbour_text(ds.seq, split.train_end, ds.spec.n_items, columns)
        fused = TextFusion(torch.nn.Embedding(ds.spec.n_items + 2, 64, padding_idx=0), text)
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows[str(columns)] = {"shape": list(text.vectors.shape), "nonzeros": int(fused.text_val.numel()),
                              "items_without": text.n_missing, "peak_mb": round(peak / 2**20, 1),
                              "seconds": round(seconds, 2)}
        print(columns, rows[str(columns)])
    out = {**provenance(__file__), "machine": machine(), "data": "Amazon Beauty, training split of the default config",
           "what": "peak numpy/scipy memory (tracemalloc) of neighbour_text + TextFusion", "rows": rows}
    (RESULTS / "neighbour_build.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
