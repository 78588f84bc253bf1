"""Multi-behaviour benchmark on three real shop logs: one JSON line per data set.

    nice -n 10 .venv/bin/python bench/multibehaviour.py >> bench/results/multibehaviour.jsonl
    .venv/bin/python bench/multibehaviour.py --datasets rees46 --quick      # smoke run, ~minutes

For each data set (Taobao UserBehavior head, Alibaba CIKM'19 EComm, REES46 Oct-2019 head) it
prepares the raw file as data/demo/README.md does, trains SASRec with every head
(``task.kind=multi``: next item, next item of the target behaviour, next action, intent) and the
same model without behaviour inputs (``model.use_behaviour=false``, the ablation), and evaluates
both beside the heuristic baselines on the same global temporal split (see
``shopformer.pipelines.multi_behaviour`` for the protocol). The target behaviour is not named here: it is
the data's deepest funnel stage (``default_target_behaviour``).

Each line holds every metric (per-behaviour rankings, next-action accuracy / macro-F1 / recall /
confusion, intent ROC-AUC / PR-AUC / ECE / reliability), the exclusions, the configuration and
the issue's target checks. Plots and the saved run go to ``--out/<data set>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch

from shopformer.config import Config, apply_overrides
from shopformer.data.batches import Batch, EventArrays, history_batches
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.schema import PAD
from shopformer.evaluation.report import markdown_summary
from shopformer.pipelines.multi_behaviour import run_multibehaviour

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "out" / "bench_data"


def _day(y: int, m: int, d: int, utc_offset_hours: int = 0) -> int:
    """Unix seconds of local midnight in a fixed UTC offset."""
    tz = timezone(timedelta(hours=utc_offset_hours))
    return int(datetime(y, m, d, tzinfo=tz).timestamp())


# Raw file, ingest options (the data/demo/README.md recipes) and split boundaries of each data set.
DATASETS: dict[str, dict] = {
    # 2017-11-25 .. 12-03 in China time: train to Nov 30, validate Dec 1, test Dec 2-3.
    "taobao": {
        "raw": SHARED / "taobao_userbehavior" / "UserBehavior_head.csv",
        "ingest": IngestOptions(columns=("user_id", "item_id", "category_id", "event_type", "timestamp")),
        "split": {"valid_start": _day(2017, 12, 1, 8), "test_start": _day(2017, 12, 2, 8)},
    },
    # Day resolution (ties keep file order), 2019-06-10 .. 06-19: train to Jun 16, validate Jun 17, test Jun 18-19.
    "cikm_ecomm": {
        "raw": SHARED / "alibaba_cikm2019_ecomm" / "ecomm_edge_train.txt",
        "ingest": IngestOptions(columns=("user_id", "item_id", "event_type", "timestamp"),
                                event_names={"1": "click", "2": "collect", "3": "cart", "4": "buy"}),
        "split": {"valid_start": _day(2019, 6, 17), "test_start": _day(2019, 6, 18)},
    },
    # Under three hours of events: quantiles of the event times (70% / 85%). Histories are ~4 events,
    # so a 10-event intent horizon is censored almost everywhere (no positive left): 3 events.
    "rees46": {
        "raw": SHARED / "rees46_2019oct_head" / "2019-Oct_head.csv",
        "ingest": IngestOptions(mapping={"item_id": "product_id", "timestamp": "event_time",
                                         "session_id": "user_session"}),
        "split": {"valid_start": 0.7, "test_start": 0.85},
        "task": {"intent_horizon": 3},
    },
}

BASE = {
    "model": {"name": "sasrec", "dim": 64, "layers": 2, "heads": 2, "max_len": 50, "dropout": 0.3, "emb_dropout": 0.3},
    "task": {"kind": "multi", "intent_horizon": 10},
    "loss": {"kind": "sampled", "negatives": 2048},
    "train": {"epochs": 12, "batch_size": 64, "learning_rate": 0.001, "patience": 4, "seed": 42},
    "eval": {"ks": [5, 10, 20], "bootstrap": 200},
}
QUICK = {"model": {"dim": 32, "layers": 1}, "train": {"epochs": 2, "patience": 2}, "eval": {"bootstrap": 0}}


def load_or_prepare(raw: Path, options: IngestOptions) -> Dataset:
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:12]
    out = CACHE / f"{raw.stem}-{digest}"
    if not (out / "stats.json").exists():
        prepare([raw], out, options, overwrite=True)
    return load_dataset(out)


def target_checks(m: dict, model: str, ablation: str) -> dict:
    """The issue's benchmark targets, computed from one data set's metrics."""
    target = m["target_behaviour"]
    rows = m["next_item"][target]
    ours, blind = rows[model]["ndcg@10"], rows[ablation]["ndcg@10"]
    heuristics = {k: v["ndcg@10"] for k, v in rows.items() if not k.startswith(model)}
    out = {
        "next_target_ndcg10": ours,
        "next_target_ndcg10_ablation": blind,
        "behaviour_inputs_ratio": ours / blind if blind > 0 else None,
        "ratio_ge_1.15": blind > 0 and ours >= 1.15 * blind,
        "best_heuristic": max(heuristics, key=heuristics.get) if heuristics else None,
        "above_every_heuristic": all(ours > v for v in heuristics.values()),
    }
    if "next_action" in m:
        out["action_macro_f1"] = m["next_action"][model]["macro_f1"]
        out["action_macro_f1_majority"] = m["next_action"]["majority class"]["macro_f1"]
    if "intent" in m:
        out["intent_roc_auc"] = m["intent"][model]["roc_auc"]
        out["intent_ece"] = m["intent"][model]["ece"]
        out["intent_auc_ge_0.80_and_ece_le_0.05"] = out["intent_roc_auc"] >= 0.80 and out["intent_ece"] <= 0.05
    return out


# ---- analysis: what the data allows (no model training; ``--analysis``) -------------------------------


def _ndcg10_weighted_recency(batches: list[tuple[Batch, torch.Tensor]], weights: torch.Tensor, decay: float) -> float:
    """NDCG@10 of "score(item) = sum over its history events of weights[behaviour] * decay^age"
    (items outside the history score 0, tied with the whole catalogue: a miss)."""
    total, n = 0.0, 0
    for b, target in batches:
        real = b.items != PAD
        length = b.items.shape[1]
        age = torch.arange(length - 1, -1, -1, dtype=torch.float64)
        contrib = weights[b.behaviours] * decay**age * real  # (B, L)
        same = (b.items[:, :, None] == b.items[:, None, :]) & real[:, :, None] & real[:, None, :]
        item_score = (same.double() * contrib[:, None, :]).sum(-1)  # (B, L) score of the item at s
        first = real & ~torch.tril(same, diagonal=-1).any(-1)  # one slot per distinct item
        is_t = (b.items == target[:, None]) & real
        t_score = torch.where(is_t.any(1), (item_score * is_t).amax(1), torch.zeros(len(target), dtype=torch.float64))
        valid = first & (item_score > 0)
        rank = ((item_score > t_score[:, None]) & valid).sum(1) + ((item_score == t_score[:, None]) & valid
                                                                 & ~is_t).sum(1)
        hit = (t_score > 0) & (rank < 10)
        total += float(torch.where(hit, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros_like(t_score)).sum())
        n += len(target)
    return total / max(n, 1)


def behaviour_headroom(ds: Dataset, cfg: Config) -> dict:
    """How much can behaviour types add to a recency/frequency ranking of the next target item?

    Behaviour-blind (every event weighs 1) vs behaviour-weighted (one weight per non-majority type
    from a grid); the decay and the weights are chosen on validation, reported on test."""
    from itertools import product

    from shopformer.data.split import make_windows, window_examples
    from shopformer.evaluation.baselines import majority_behaviour
    from shopformer.pipelines.multi_behaviour import configure

    cfg, target = configure(ds, cfg)
    train_end, valid_w, test_w = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    nb = len(ds.vocabs.behaviours)
    majority = majority_behaviour(ds.seq, train_end, nb)

    def batches(w):
        ex, _ = window_examples(ds.seq, w, target)
        tgt = torch.from_numpy(ds.seq.items[ex.pos].astype(np.int64))
        return [(b, tgt[idx]) for idx, b in history_batches(ds.seq, arrays, ex, cfg.model.max_len, 1024)]

    bv, bt = batches(valid_w), batches(test_w)
    decays, grid = (0.8, 0.9, 0.95, 1.0), (0.0, 0.5, 1.0, 2.0, 4.0)
    others = [b for b in range(1, nb + 1) if b != majority]
    blind = max(decays, key=lambda g: _ndcg10_weighted_recency(bv, torch.ones(nb + 1, dtype=torch.float64), g))
    best, best_v = None, -1.0
    for combo in product(grid, repeat=len(others)):
        w = torch.ones(nb + 1, dtype=torch.float64)
        w[others] = torch.tensor(combo, dtype=torch.float64)
        for g in decays:
            v = _ndcg10_weighted_recency(bv, w, g)
            if v > best_v:
                best, best_v = (w, g), v
    assert best is not None
    ones = torch.ones(nb + 1, dtype=torch.float64)
    blind_test, weighted_test = _ndcg10_weighted_recency(bt, ones, blind), _ndcg10_weighted_recency(bt, *best)
    names = ds.vocabs.behaviours.tokens
    return {
        "behaviour_blind": {"decay": blind, "valid": _ndcg10_weighted_recency(bv, ones, blind), "test": blind_test},
        "behaviour_weighted": {"decay": best[1], "weights": {names[b]: float(best[0][b]) for b in range(1, nb + 1)},
                               "valid": best_v, "test": weighted_test},
        "test_ratio": weighted_test / blind_test if blind_test > 0 else None,
    }


def _count_features(batch: Batch, nb: int, horizon: int, n_buckets: int) -> torch.Tensor:
    """Hand-made features of a history window: behaviour shares (last N, window), log length, last
    behaviour, time-gap buckets of the last event and of the last N."""
    real = (batch.items != PAD).float()
    onehot = torch.nn.functional.one_hot(batch.behaviours, nb + 1)[..., 1:].float() * real[..., None]
    last_n = onehot[:, -horizon:].sum(1) / real[:, -horizon:].sum(1, keepdim=True).clamp(min=1)
    window = onehot.sum(1) / real.sum(1, keepdim=True).clamp(min=1)
    gaps = batch.gaps.float() / n_buckets
    gap_n = (gaps[:, -horizon:] * real[:, -horizon:]).sum(1, keepdim=True) / real[:, -horizon:].sum(
        1, keepdim=True).clamp(min=1)
    return torch.cat([last_n, window, torch.log1p(real.sum(1, keepdim=True)), onehot[:, -1], gaps[:, -1:], gap_n], 1)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int | None) -> torch.nn.Linear:
    """Full-batch L-BFGS logistic (binary when n_classes is None, else multinomial) regression."""
    lin = torch.nn.Linear(x.shape[1], 1 if n_classes is None else n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = lin(x)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float()) if n_classes is None
                else torch.nn.functional.cross_entropy(out, y)) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def feature_baselines(ds: Dataset, cfg: Config) -> dict:
    """Logistic regressions on hand-made behaviour-count features for next action and intent:
    trained on every training-prefix prediction point, calibrated/tuned on validation, tested once."""
    from shopformer.data.split import Window, intent_examples, make_windows, window_examples
    from shopformer.evaluation.behaviour import decision_offsets
    from shopformer.evaluation.classification import binary_summary, fit_platt, multiclass_summary, sigmoid
    from shopformer.pipelines.multi_behaviour import configure

    cfg, target = configure(ds, cfg)
    train_end, valid_w, test_w = make_windows(ds.seq, cfg)
    train_w = Window("train", int(ds.seq.times.min()), valid_w.lo, train_end)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    nb, horizon = len(ds.vocabs.behaviours), cfg.task.intent_horizon

    def feats(ex) -> torch.Tensor:
        parts = [_count_features(b, nb, horizon, cfg.model.time_buckets)
                 for _, b in history_batches(ds.seq, arrays, ex, cfg.model.max_len, 4096)]
        return torch.cat(parts) if parts else torch.zeros(0, 3 * nb + 3)

    out: dict = {}
    # next action
    ex = {w.name: window_examples(ds.seq, w)[0] for w in (train_w, valid_w, test_w)}
    x = {k: feats(v) for k, v in ex.items()}
    mu, sd = x["train"].mean(0), x["train"].std(0).clamp(min=1e-6)
    y = {k: torch.from_numpy(ds.seq.behaviours[v.pos].astype(np.int64)) - 1 for k, v in ex.items()}
    lin = _fit_logistic((x["train"] - mu) / sd, y["train"], nb)
    with torch.no_grad():
        pv = torch.softmax(lin((x["valid"] - mu) / sd), 1).numpy()
        pt = torch.softmax(lin((x["test"] - mu) / sd), 1).numpy()
    pad = np.zeros((len(pv), 1)), np.zeros((len(pt), 1))
    pv, pt = np.concatenate([pad[0], pv], 1), np.concatenate([pad[1], pt], 1)
    prior = np.bincount(y["train"].numpy() + 1, minlength=nb + 1) / len(y["train"])
    labels = list(range(1, nb + 1))
    tau, offsets = decision_offsets(pv, y["valid"].numpy() + 1, prior, labels)
    pred = np.asarray(labels)[np.argmax(np.log(np.clip(pt[:, 1:], 1e-12, None)) + offsets[1:], 1)]
    out["next_action_logistic_counts"] = {**multiclass_summary(y["test"].numpy() + 1, pred,
                                                               list(ds.vocabs.behaviours.tokens[1:]), labels),
                                          "decision_tau": tau}
    # intent
    data = {w.name: intent_examples(ds.seq, w, target, horizon) for w in (train_w, valid_w, test_w)}
    xi = {k: feats(v[0]) for k, v in data.items()}
    mu, sd = xi["train"].mean(0), xi["train"].std(0).clamp(min=1e-6)
    lin = _fit_logistic((xi["train"] - mu) / sd, torch.from_numpy(data["train"][1]), None)
    with torch.no_grad():
        sv = lin((xi["valid"] - mu) / sd).squeeze(1).numpy()
        st = lin((xi["test"] - mu) / sd).squeeze(1).numpy()
    a, b = fit_platt(sv, data["valid"][1])
    res = binary_summary(data["test"][1], sigmoid(a * st + b))
    res.pop("reliability")
    out["intent_logistic_counts"] = {**res, "train_examples": len(data["train"][1])}
    return out


def report(lines: list[dict]) -> str:
    """Markdown tables across data sets from the JSON lines (``--report``)."""
    out = ["| data set | target | model NDCG@10 | no-behaviour NDCG@10 | ratio | best heuristic (NDCG@10) | "
           "action macro-F1 (majority) | intent ROC-AUC | intent ECE |", "|---|---|---|---|---|---|---|---|---|"]
    for d in lines:
        if "skipped" in d:
            continue
        t, m = d["targets"], d["metrics"]
        rows = m["next_item"][m["target_behaviour"]]
        best = t["best_heuristic"]
        ratio = "–" if t["behaviour_inputs_ratio"] is None else f"{t['behaviour_inputs_ratio']:.2f}x"
        out.append(
            f"| {d['dataset']} | {m['target_behaviour']} | {t['next_target_ndcg10']:.4f} | "
            f"{t['next_target_ndcg10_ablation']:.4f} | {ratio} | {best} ({rows[best]['ndcg@10']:.4f}) | "
            f"{t.get('action_macro_f1', float('nan')):.4f} ({t.get('action_macro_f1_majority', float('nan')):.4f}) | "
            f"{t.get('intent_roc_auc', float('nan')):.4f} | {t.get('intent_ece', float('nan')):.4f} |")
    for d in lines:
        if "skipped" not in d:
            out += ["", f"### {d['dataset']}", "", markdown_summary(d["metrics"], tuple(d["config"]["eval"]["ks"]))]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_multibehaviour")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 epochs: checks the pipeline only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--max-item-examples", type=int, default=5000,
                    help="cap per ranking task (seeded sample; the target behaviour is usually below it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", type=Path, help="print markdown tables from a JSON-lines result file and exit")
    ap.add_argument("--analysis", action="store_true",
                    help="no model: behaviour headroom of recency heuristics + logistic regressions on counts")
    args = ap.parse_args(argv)
    if args.report:
        print(report([json.loads(x) for x in args.report.read_text().splitlines() if x.strip()]))
        return
    torch.set_num_threads(args.threads)
    command = " ".join(["python", "bench/multibehaviour.py", *(argv if argv is not None else sys.argv[1:])])
    for name in args.datasets:
        spec = DATASETS[name]
        if not spec["raw"].exists():
            print(json.dumps({"bench": "multibehaviour", "dataset": name, "skipped": f"{spec['raw']} not found"}))
            continue
        ds = load_or_prepare(spec["raw"], spec["ingest"])
        cfg = Config().override(**BASE).override(split={"kind": "temporal", **spec["split"]},
                                                   task=spec.get("task", {}))
        if args.quick:
            cfg = cfg.override(**QUICK)
        cfg = apply_overrides(cfg, args.overrides)
        t0 = time.perf_counter()
        if args.analysis:
            print(json.dumps({"bench": "multibehaviour-analysis", "dataset": name, "command": command,
                              "headroom": behaviour_headroom(ds, cfg), **feature_baselines(ds, cfg),
                              "seconds": round(time.perf_counter() - t0, 1)}, default=float), flush=True)
            continue
        res = run_multibehaviour(ds, cfg, args.out / name, progress=False, ablation=True,
                                 max_item_examples=args.max_item_examples)
        m = res.metrics
        model, ablation = cfg.model.name, f"{cfg.model.name} without behaviour inputs"
        line = {
            "bench": "multibehaviour",
            "dataset": name,
            "command": command,
            "raw": str(spec["raw"].relative_to(SHARED.parent)),
            "events": int(len(ds.seq.items)),
            "users": int(ds.seq.n_users),
            "items": int(ds.spec.n_items),
            "config": json.loads(cfg.to_json()),
            "targets": target_checks(m, model, ablation),
            "metrics": m,
            "seconds": round(time.perf_counter() - t0, 1),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
        }
        (args.out / name / "summary.md").write_text(markdown_summary(m, cfg.eval.ks) + "\n")
        print(json.dumps(line, default=float), flush=True)


if __name__ == "__main__":
    main()
