"""Why does shopformer trail RecBole on the Taobao `pv` 300-user slice? The peers stage's config, one change at a time.

    .venv/bin/python bench/peers_taobao_variants.py VARIANT [SEED]

VARIANT: recbole | base | stride | b16 | b16-nogap | b16-untied | b16-init02 | b16-init02-cos | b16-init02-post |
b16-init02-rbopt | b16-init02-post-rbopt; SEED: 42 unless given.

``recbole``: the peer itself, bench/peers.py's RecBole stage (15 epochs, patience 10) at this seed, for its
seed-to-seed spread; ``base``: bench/peers.py's shopformer stage at batch 256 (its 20-step warm-up, patience
10); ``b16``: batch 16;
``stride``: training windows every max_len / 5 events instead of every max_len, so most targets train with a long
context as RecBole's every-prefix samples do; ``nogap``: no time-gap embedding (RecBole has none); ``untied``: its
own output table; ``init02``: every embedding table initialised with std 0.02 (RecBole's ``initializer_range``)
instead of 1 / sqrt(dim); ``cos``: cosine scoring (``model.cosine``); ``post``: post-norm blocks as RecBole's
(``model.norm = "post"``); ``rbopt``: RecBole's optimiser settings (learning rate 0.001, constant, no warm-up).
Prints one JSON line (append it to bench/results/peers_taobao_variants.jsonl).
"""
import functools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import peers
import torch
from common import load_or_prepare

import shopformer.data.batches as B
from shopformer.config import Config
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import make_split
from shopformer.data.options import IngestOptions
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.pipelines.next_item import train_next_item


def main() -> None:
    variant = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 42
    torch.set_num_threads(1)
    work = Path(__file__).resolve().parents[1] / "out" / "taobao_gap"
    work.mkdir(parents=True, exist_ok=True)
    path, _, _ = peers.input_file("taobao-pv", work, 300)
    command = f".venv/bin/python bench/peers_taobao_variants.py {variant}" + (f" {seed}" if seed != 42 else "")
    if variant == "recbole":
        print(json.dumps({"bench": "peers_taobao_variants", "command": command, **recbole(path, work, seed)}))
        return
    ds = load_or_prepare(Path(path), IngestOptions(format="csv"))
    m = peers.MODEL
    model = {"name": "sasrec", "dim": m["dim"], "layers": m["layers"], "heads": m["heads"], "dropout": m["dropout"],
             "emb_dropout": m["dropout"], "max_len": m["max_len"], "tie_output": "untied" not in variant,
             "use_time_gap": "nogap" not in variant, "init_std": 0.02 if "init02" in variant else None,
             "cosine": "cos" in variant, "norm": "post" if "post" in variant else "pre"}
    train = {"epochs": 60, "batch_size": 16 if "b16" in variant else 256, "learning_rate": 0.002,
             "schedule": "cosine", "warmup_steps": 20, "patience": 10, "seed": seed, "threads": 1}
    if "rbopt" in variant:
        train |= {"learning_rate": 0.001, "schedule": "constant", "warmup_steps": 0}
    if "stride" in variant:
        # windows ending every max_len // 5 events, so most targets train with a long context;
        # make_train_loader looks training_windows up at call time
        B.training_windows = functools.partial(B.training_windows, stride=max(1, model["max_len"] // 5))
    cfg = Config().override(model=model, train=train, eval={"exclude_seen": False, "bootstrap": 200})
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    t0 = time.perf_counter()
    tr = train_next_item(ds, cfg, split, arrays, progress=False)
    test = evaluate(model_scorer(tr.model), ds.seq, arrays, split.test, ds.spec.n_items, cfg.model.max_len,
                    cfg.eval).metrics
    print(json.dumps({"bench": "peers_taobao_variants", "command": command,
                      "variant": variant, "seed": seed, "valid": round(tr.valid["ndcg@10"], 5),
                      "test": round(float(test["ndcg@10"]), 5),
                      "test_hr10": round(float(test["hr@10"]), 5), "best_epoch": tr.fit.best_epoch,
                      "epochs": tr.fit.epochs, "stopped_by": tr.fit.stopped_by,
                      "s": round(time.perf_counter() - t0, 1)}), flush=True)


def recbole(path: Path, work: Path, seed: int) -> dict:
    """RecBole SASRec on the same file, as bench/peers.py runs it (its MODEL, one thread, 15 epochs)."""
    venv = Path(peers.ensure_venv(peers.DEFAULT_VENV)["venv"])
    args = SimpleNamespace(recbole_max_epochs=15, recbole_patience=10, recbole_budget_s=10_000.0, threads=1, seed=seed)
    res = peers.run_recbole(args, venv, path, "csv", work)  # type: ignore[arg-type]
    scores = res["valid_scores"]
    return {"variant": "recbole", "seed": seed, "valid": round(max(scores), 5),
            "test": round(res["test"]["NDCG@10"], 5), "test_hr10": round(res["test"]["HR@10"], 5),
            "best_epoch": res["best_epoch"], "epochs": res["epochs_run"], "stopped_by": res["stopped_by"],
            "s": round(res["total_wall_s"], 1), "harness": res["command"]}


if __name__ == "__main__":
    main()
