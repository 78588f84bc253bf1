"""Multi-behaviour benchmark on three real shop logs: one JSON line per data set.

    nice -n 10 .venv/bin/python bench/multibehaviour.py >> bench/results/multibehaviour.jsonl
    .venv/bin/python bench/multibehaviour.py --datasets rees46 --quick      # smoke run, ~minutes

For each data set (Taobao UserBehavior head, Alibaba CIKM'19 EComm, REES46 Oct-2019 head) it
prepares the raw file as data/demo/README.md does, trains SASRec with every head
(``task.kind=multi``: next item, next item of the target behaviour, next action, intent) and the
same model without behaviour inputs (``model.use_behaviour=false``, the ablation), and evaluates
both beside the heuristic baselines on the same global temporal split (see
``shopformer.multibehaviour`` for the protocol). The target behaviour is not named here: it is
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

import torch

from shopformer.behaviour_eval import markdown_summary
from shopformer.config import Config, apply_overrides
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.experiment import Dataset, load_dataset
from shopformer.multibehaviour import run_multibehaviour

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
