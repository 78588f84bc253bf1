"""Customer-service intent (issue 14, item 5): the next-action head on a real log's rare event type,
per class, beside the Markov heuristic (next behaviour given the previous one).

    nice -n 5 .venv/bin/python bench/service_intent.py --results bench/results

Logs (open behaviour vocabulary: each event type the log has is a class of the head):

* ``uci_retail``: UCI Online Retail, the whole year (``bench/applications.py``'s ``uci_year_events``):
  ``purchase`` and ``cancel`` invoice lines (a cancellation is the shop's return / refund request,
  1.7 % of lines). The run is the one ``bench/applications.py`` trained (``--uci-run``; trained on
  events before end - 63 d, validated the week after); test = every event after its validation week.
* ``rees46``: REES46 Oct-2019 head (``view`` / ``cart`` / ``purchase``; cart 0.9 %, purchase 1.2 %),
  trained here as ``bench/multibehaviour.py`` does (temporal 70 % / 85 % quantiles).
  (The brief's example, ``remove_from_cart``, is not in this slice: it has view / cart / purchase only.)

For every test event with a history: the head's class decision (argmax of log p plus the decision
offsets stored in the run, fitted on validation for macro-F1) and the Markov heuristic's (its
offsets tuned on validation the same way). Per class: precision, recall, F1, support, and the
average precision of the class probability (threshold-free). ``onset`` rows keep only the events
whose previous event is of another type: an invoice's cancellation lines come in runs, so the
Markov rule gets every line after the first for free; the first line (the customer turning to a
return) is the prediction a service desk can act on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import CACHE, ROOT, SHARED, load_or_prepare, machine, provenance

from shopformer.artifacts import Run, load_run
from shopformer.config import Config
from shopformer.data.batches import EventArrays, history_batches
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.schema import PAD
from shopformer.data.sequences import training_mask
from shopformer.data.split import make_windows, window_examples
from shopformer.evaluation.baselines import behaviour_transitions
from shopformer.evaluation.behaviour import decision_offsets
from shopformer.evaluation.classification import pr_auc
from shopformer.pipelines.multi_behaviour import run_multibehaviour

NAME = "service_intent.json"
REES46 = {"raw": SHARED / "rees46_2019oct_head" / "2019-Oct_head.csv",
          "ingest": IngestOptions(mapping={"item_id": "product_id", "timestamp": "event_time",
                                           "session_id": "user_session"})}
REES46_CFG = {"model": {"name": "sasrec", "dim": 64, "layers": 2, "heads": 2, "max_len": 50, "dropout": 0.3,
                        "emb_dropout": 0.3},
              "task": {"kind": "multi", "intent_horizon": 3, "intent_seconds": 300},
              "loss": {"kind": "sampled", "negatives": 2048},
              "train": {"epochs": 12, "batch_size": 64, "learning_rate": 0.001, "patience": 4, "seed": 42},
              "split": {"kind": "temporal", "valid_start": 0.7, "test_start": 0.85},
              "eval": {"bootstrap": 0}}


def probs_of(fn, ds: Dataset, arrays: EventArrays, ex, max_len: int) -> np.ndarray:  # noqa: ANN001
    parts = [fn(batch) for _, batch in history_batches(ds.seq, arrays, ex, max_len, 512)]
    return np.concatenate(parts)


def per_class(y: np.ndarray, pred: np.ndarray, p: np.ndarray, names: list[str], mask: np.ndarray) -> dict:
    out = {}
    for c, name in enumerate(names, start=1):
        yt, yp = y[mask] == c, pred[mask] == c
        tp = int((yt & yp).sum())
        prec = tp / int(yp.sum()) if yp.any() else float("nan")
        rec = tp / int(yt.sum()) if yt.any() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        out[name] = {"precision": prec, "recall": rec, "f1": f1, "support": int(yt.sum()),
                     "predicted": int(yp.sum()), "average_precision": pr_auc(yt.astype(np.int64), p[mask, c])
                     if yt.any() else float("nan")}
    return out


def evaluate(run: Run, ds: Dataset) -> dict:
    model, cfg = run.model.eval(), run.config
    assert model.heads is not None and "action" in model.heads.parts, "the run has no next-action head"
    seq = ds.seq
    train_end, valid, test = make_windows(seq, cfg)
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    ex_v, _ = window_examples(seq, valid)
    ex_t, _ = window_examples(seq, test)
    y_v, y_t = seq.behaviours[ex_v.pos].astype(np.int64), seq.behaviours[ex_t.pos].astype(np.int64)
    prev_t = seq.behaviours[ex_t.pos - 1].astype(np.int64)
    names = list(ds.vocabs.behaviours.tokens[1:])
    labels = list(range(1, len(names) + 1))
    mask = training_mask(seq, train_end)
    prior = np.bincount(seq.behaviours[mask], minlength=len(names) + 1).astype(np.float64)
    prior[PAD] = 0.0
    prior /= prior.sum()
    trans = behaviour_transitions(seq, train_end, len(names))

    def head(batch):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            return torch.softmax(model.action_logits(batch).float(), -1).numpy()

    def markov(batch):  # noqa: ANN001, ANN202
        return trans[batch.behaviours[:, -1].numpy()]

    systems = {}
    for name, fn in (("model (next-action head)", head), ("markov (previous behaviour)", markov)):
        p_t = probs_of(fn, ds, arrays, ex_t, model.max_len)
        if fn is head:
            offsets = model.heads.action_offsets.detach().double().numpy()
        else:
            _, offsets = decision_offsets(probs_of(fn, ds, arrays, ex_v, model.max_len), y_v, prior, labels)
        cols = np.asarray(labels)
        pred = cols[np.argmax(np.log(np.clip(p_t[:, cols], 1e-12, None)) + offsets[cols], axis=1)]
        every = np.ones(len(y_t), bool)
        systems[name] = {"all": per_class(y_t, pred, p_t, names, every),
                         "onset": {c: per_class(y_t, pred, p_t, names, prev_t != i)[c]
                                   for i, c in enumerate(names, start=1)}}
    counts = {n: int((y_t == i).sum()) for i, n in enumerate(names, start=1)}
    return {"behaviours": names, "training_share": {n: float(prior[i]) for i, n in enumerate(names, start=1)},
            "test_events": int(len(y_t)), "test_counts": counts, "systems": systems,
            "test_from": int(test.lo), "valid_from": int(valid.lo)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uci-run", type=Path, default=ROOT / "out" / "bench_applications" / "uci_retail" / "model")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_service_intent")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--datasets", nargs="+", choices=("rees46", "uci_retail"), default=["rees46", "uci_retail"])
    ap.add_argument("--results", type=Path, help=f"write DIR/{NAME}, keeping the other data sets' entries there")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_info = {**provenance(__file__, argv), "load_avg_start": list(os.getloadavg())}
    line: dict = {}
    if "rees46" in args.datasets:
        t = time.perf_counter()
        ds = load_or_prepare(REES46["raw"], REES46["ingest"], CACHE)
        res = run_multibehaviour(ds, Config().override(**REES46_CFG), args.out / "rees46", progress=False)
        line["rees46"] = {**evaluate(load_run(res.run_dir), ds), "seconds": time.perf_counter() - t}
    if "uci_retail" in args.datasets:
        if args.uci_run.exists():
            run = load_run(args.uci_run)
            line["uci_retail"] = {**evaluate(run, load_dataset(run.manifest["dataset_dir"])), "run": str(args.uci_run)}
        else:
            line["uci_retail"] = {"skipped": f"{args.uci_run} not found: run bench/applications.py first"}
    run_info.update({"load_avg_end": list(os.getloadavg()), "machine": machine()})
    for entry in line.values():
        entry.update(run_info)  # each data set's entry names the command that produced it
    print(json.dumps(line, default=float))
    if args.results is not None:
        path = args.results / NAME
        old = json.loads(path.read_text()) if path.exists() else {}
        keep = {k: v for k, v in old.items() if k in ("rees46", "uci_retail") and k not in line}
        head = {"bench": run_info["bench"], "command": run_info["command"]}  # the latest run's command
        path.write_text(json.dumps({**head, **keep, **line}, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
