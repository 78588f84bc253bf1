"""Exploratory: which change to a tied SASRec stops it ranking the user's newest event first (Beauty, seen kept).

    .venv/bin/python bench/seen_items_variants.py VARIANT --epochs 8 --threads 1 --out FILE.jsonl

Runs ``bench/seen_items.py`` (its arguments after VARIANT) with the model patched at run time, so that a variant
can be measured before it earns a config option. VARIANT is one of:

- ``small_init``: item and position tables drawn with std 0.02 (RecBole's init) instead of dim**-0.5;
- ``proj``: output vectors = a learned D x D map (initialised to the identity) of the tied item table;
- ``delta``: output vectors = the tied item table + a learned per-item offset (initialised to zero);
- ``lam_scalar`` / ``lam_vec``: the encoder output minus a learned scalar / per-dimension multiple of the input
  item's own vector (initialised to zero), so the model can cancel the input item's pull on its own score.

The options that earned a config field are measured by ``bench/seen_items.py`` itself (``--norm post``: post-LN
blocks; ``--untied``: ``model.tie_output = false``). Results: bench/results/seen_items.jsonl (``variant``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

import shopformer.models.base as base
import shopformer.models.sasrec as sasrec

VARIANTS = ("small_init", "proj", "delta", "lam_scalar", "lam_vec")


def patch(variant: str) -> None:
    init0, normal0 = base.SequenceModel.__init__, nn.init.normal_

    if variant == "small_init":  # for the whole process: the model's input tables are built after the base's
        nn.init.normal_ = lambda t, mean=0.0, std=1.0, generator=None: normal0(t, mean, 0.02)  # type: ignore[assignment]

    def init(self: base.SequenceModel, cfg, spec) -> None:  # type: ignore[no-untyped-def]
        init0(self, cfg, spec)
        n, d = spec.n_items + 1, cfg.dim
        if variant == "proj":
            self.out_proj = nn.Linear(d, d, bias=False)
            nn.init.eye_(self.out_proj.weight)
        elif variant == "delta":
            self.out_delta = nn.Parameter(torch.zeros(n, d))
        elif variant.startswith("lam"):
            self.lam = nn.Parameter(torch.zeros(1 if variant == "lam_scalar" else d))

    base.SequenceModel.__init__ = init  # type: ignore[method-assign]
    table = base.SequenceModel.output_embeddings
    if variant == "proj":
        base.SequenceModel.output_embeddings = lambda self: self.out_proj(table(self))  # type: ignore[method-assign]
    elif variant == "delta":
        base.SequenceModel.output_embeddings = lambda self: table(self) + self.out_delta  # type: ignore[method-assign]
    elif variant.startswith("lam"):
        encode0 = sasrec.SASRec.encode
        sasrec.SASRec.encode = lambda self, batch: encode0(self, batch) - self.lam * self.item_emb(batch.items)  # type: ignore[method-assign]


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: seen_items_variants.py {{{','.join(VARIANTS)}}} [seen_items.py arguments]")
    patch(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).parent))
    import seen_items

    seen_items.main(sys.argv[2:], variant=sys.argv[1])
