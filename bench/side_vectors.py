"""The cost of fused side vectors per training step on Amazon Beauty: dense rows against sparse (CSR) rows.

    .venv/bin/python bench/side_vectors.py [--calls 20] [--rounds 3]

Every training step computes the fused item table once (``TextFusion.weight``: id table + side rows
@ W^T) and back-propagates into W. Multi-hot side rows (catalogue attributes, ``text.neighbours``)
are mostly zeros, so ``TextFusion`` keeps them as CSR when under ``SPARSE_BELOW`` of the entries
are set. Here the same rows go through both paths, alternating over ``--rounds`` in one process
(so a load change hits both alike), one thread: Beauty's neighbour rows (1,024 and 4,096 columns, the
training split of the default config) and its S3-Rec attribute file. Also recorded: the maximum
difference between the two paths' tables, and between their gradients relative to the largest.
Writes bench/results/side_vectors.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import RESULTS, SHARED, load_or_prepare, machine, provenance, skip_if_missing

from shopformer.config import Config
from shopformer.data.corpus import make_split
from shopformer.data.ingest import IngestOptions
from shopformer.models.text import (
    SPARSE_BELOW,
    ItemText,
    TextFusion,
    align_text,
    attribute_vectors,
    neighbour_text,
)

BEAUTY = SHARED / "amazon_beauty"
DIM = 64


def fusion(text: ItemText, sparse: bool) -> TextFusion:
    torch.manual_seed(0)
    return TextFusion(torch.nn.Embedding(text.vectors.shape[0], DIM, padding_idx=0), text,
                      sparse_below=1.0 if sparse else 0.0)  # every column sparse / every column dense


def seconds_per_call(fused: TextFusion, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fused.weight.sum().backward()
    return (time.perf_counter() - t) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    skip_if_missing(BEAUTY / "Beauty.txt", "side_vectors")
    torch.set_num_threads(1)
    ds = load_or_prepare(BEAUTY / "Beauty.txt", IngestOptions(format="sequences"))
    split = make_split(ds, Config())
    texts = {f"neighbours_{k}": neighbour_text(ds.seq, split.train_end, ds.spec.n_items, k) for k in (1024, 4096)}
    texts["attributes"] = align_text(attribute_vectors(BEAUTY / "Beauty_item2attributes.json"), ds.vocabs.items)
    rows = {}
    for name, text in texts.items():
        pair = {mode: fusion(text, mode == "sparse") for mode in ("dense", "sparse")}
        for fused in pair.values():
            fused.weight.sum().backward()  # warm-up; also leaves one call's gradient to compare
        with torch.no_grad():
            diff_table = float((pair["dense"].weight - pair["sparse"].weight).abs().max())
        grads = [fused.proj.weight.grad for fused in pair.values()]
        assert grads[0] is not None and grads[1] is not None
        rel_grad = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for _ in range(args.rounds):
            for mode, fused in pair.items():
                times[mode].append(seconds_per_call(fused, args.calls))
        dense, sparse = float(np.median(times["dense"])), float(np.median(times["sparse"]))
        rows[name] = {"shape": list(text.vectors.shape), "nonzero_share": float((text.dense() != 0).mean()),
                      "dense_ms": round(1e3 * dense, 2), "sparse_ms": round(1e3 * sparse, 2),
                      "speedup": round(dense / sparse, 1), "max_table_diff": diff_table,
                      "max_grad_diff_relative": rel_grad}
        print(name, rows[name])
    out = {**provenance(__file__), "machine": machine(), "calls": args.calls, "rounds": args.rounds,
           "sparse_below": SPARSE_BELOW, "what": "ms per TextFusion.weight forward + backward (once per step)",
           "rows": rows}
    (RESULTS / "side_vectors.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
