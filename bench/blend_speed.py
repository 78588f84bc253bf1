"""How fast does a blend search rank a batch? The per-batch kernels, stop 41's form against today's, side by side.

    .venv/bin/python bench/blend_speed.py [--items 12102 75385] [--rows 256] [--repeat 5] [--out FILE]

``train.blend`` ranks ~110 weightings of the model and five baselines on every validation example
(``evaluation.blend.choose_blend``). Per batch it standardises the model's and each baseline's scores once
(``standardise``) and ranks every blend's scores (``evaluation.metrics.target_ranks``); on the Taobao stream
slice (75k items, 20k validation examples) stop 41's forms took over 15 minutes without a word. The reference
forms below are stop 41's code, kept here only to be timed beside today's; each pair is checked bit-identical
first, then timed alternately on one thread (the same moment, so load hits both). ``--keep-freed-memory``
does what the CLI does first (``training/allocator.py``); run it with and without to see the allocator's share.
One JSON line per catalogue size, appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from common import RESULTS, machine, provenance

from shopformer.evaluation.blend import standardise
from shopformer.evaluation.metrics import target_ranks
from shopformer.training.allocator import keep_freed_memory


def standardise_s41(scores: torch.Tensor) -> torch.Tensor:
    finite = torch.isfinite(scores)
    x = torch.where(finite, scores, torch.zeros_like(scores))
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    var = (torch.where(finite, x - mean, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / n
    z = (x - mean) / var.sqrt().clamp(min=1e-12)
    return torch.where(finite, z, torch.full_like(z, float("-inf")))


def target_ranks_s41(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    t = scores.gather(1, targets.unsqueeze(1))
    rank = (scores > t).sum(1) + (scores == t).sum(1) - 1
    return torch.where(torch.isneginf(t.squeeze(1)), torch.full_like(rank, scores.shape[1]), rank)


def rank_one_s41(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What stop 41's ``evaluate_each`` did with each blend's (B, V) scores in a blend search (seen items
    kept): a copy, the targets' ranks and the top-20 lists the search never read."""
    copy = scores.clone()
    ranks = target_ranks_s41(copy, targets)
    copy.topk(20, dim=1)
    return ranks


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[12102, 75385], help="catalogue sizes (+1 padding)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "blend_speed.jsonl")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="what the CLI does first (training/allocator.py): freed blocks are reused, not unmapped")
    ap.add_argument("--mix", action="store_true", help="also time one blend's mix and the copy evaluation makes")
    args = ap.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    torch.set_num_threads(1)
    for items in args.items:
        g = torch.Generator().manual_seed(0)
        scores = torch.randn(args.rows, items, generator=g)
        scores[:, 0] = float("-inf")  # padding, as every scorer leaves it
        scores[::4, 1:200] = float("-inf")  # a seen-items mask
        targets = torch.randint(200, items, (args.rows,), generator=g)
        assert torch.equal(standardise(scores), standardise_s41(scores))
        assert torch.equal(target_ranks(scores, targets), target_ranks_s41(scores, targets))
        assert torch.equal(target_ranks(scores, targets), rank_one_s41(scores, targets))
        pairs = {"standardise": (partial(standardise_s41, scores), partial(standardise, scores)),
                 "target_ranks": (partial(target_ranks_s41, scores, targets), partial(target_ranks, scores, targets)),
                 # today: ranks only (evaluate_each(lists=False), no copy while seen items are kept)
                 "rank_one_blend": (partial(rank_one_s41, scores, targets), partial(target_ranks, scores, targets))}
        line: dict = {"bench": "blend_speed", **provenance(__file__), "items": items, "rows": args.rows,
                      "threads": 1, "keep_freed_memory": kept, "machine": machine()}
        if args.mix:  # no stop-41 form: the same code, timed for the allocator's sake
            z = torch.randn(args.rows, items, generator=g)
            line["mix_and_copy_ms"] = round(1e3 * sorted(
                timed(partial(lambda a, b: (0.9 * a + 0.1 * b).clone(), scores, z)) for _ in range(args.repeat)
            )[args.repeat // 2], 1)
        for name, (before, now) in pairs.items():
            s41, today = [], []
            for _ in range(args.repeat):  # alternate, so both see the same load
                s41.append(timed(before))
                today.append(timed(now))
            a, b = sorted(s41)[len(s41) // 2], sorted(today)[len(today) // 2]
            line[name] = {"stop41_ms": round(a * 1e3, 1), "now_ms": round(b * 1e3, 1), "speedup": round(a / b, 2)}
        print(json.dumps(line), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
