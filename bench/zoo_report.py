"""Turn the benchmark JSON lines into the README tables (bench/results/zoo.md). Never edit that file by hand.

    .venv/bin/python bench/zoo_report.py            # reads bench/results/*.jsonl, writes bench/results/zoo.md
    .venv/bin/python bench/zoo_report.py --results bench/results/zoo_quick --out bench/results/zoo_quick/zoo.md

Tables: the Beauty zoo beside the published reference rows of the data set's PROVENANCE.md, the
augmentation ablation, pre-training -> fine-tuning on Taobao purchases, and cold start. A missing
input file gives a "not run" line; when a configuration was run more than once the last line wins.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from common import RESULTS, SHARED, command_line, rel

COLS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20")


def read_lines(path: Path, key: Callable[[dict], str] | None = None) -> list[dict]:
    """JSON lines (other lines, e.g. warnings, are ignored); the last line of each configuration
    (``key``, default: name + augmentation settings) wins."""
    if not path.exists():
        return []
    rows: dict[str, dict] = {}
    for text in path.read_text().splitlines():
        if text.startswith("{"):
            row = json.loads(text)
            rows[(key or label)(row) if "config" in row else str(len(rows))] = row
    return list(rows.values())


def loss_overrides(overrides: list[str]) -> list[str]:
    """The ``loss.*`` entries of ``--set`` overrides, without the section, and "refit" when the
    run was re-trained on training + validation: ["kind=sampled", "refit", ...]."""
    out = [o.removeprefix("loss.") for o in overrides if o.startswith("loss.")]
    return [*out, "refit"] if "train.refit=true" in overrides else out


def set_overrides(row: dict) -> list[str]:
    """The ``--set section.key=value`` words of the row's command."""
    words = row.get("command", "").split()
    return [w for w, prev in zip(words[1:], words, strict=False) if prev == "--set"]


def label(row: dict) -> str:
    """Configuration name, plus its non-default augmentation settings and loss overrides."""
    extra = ", ".join([*(f"{k}={v}" for k, v in (row.get("augment") or {}).items()),
                       *loss_overrides(set_overrides(row))])
    return f"{row['config']} ({extra})" if extra else row["config"]


def published_rows(provenance: Path) -> list[list[str]]:
    """The reference table under '## Protocol and published reference numbers' in PROVENANCE.md."""
    if not provenance.exists():
        return []
    out, inside = [], False
    for line in provenance.read_text().splitlines():
        if line.startswith("## "):
            inside = line.startswith("## Protocol and published")
        elif inside and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] != "method":
                out.append(cells)
    return out


def fmt(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else ("–" if x is None else str(x))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def commands(rows: list[dict]) -> list[str]:
    seen = sorted({r["command"] for r in rows if r.get("command")})
    return ["", "Produced by:", "", *(f"    {c}" for c in seen)] if seen else []


def zoo_section(rows: list[dict], provenance: Path) -> list[str]:
    out = ["## Amazon Beauty: the zoo beside published results", ""]
    if not rows:
        return [*out, "Not run yet: `bench/zoo.py`.", ""]
    quick = any(r.get("quick") for r in rows)
    out += [
        "Leave-one-out, full ranking over all items, items already in the history removed, model selected on",
        "validation NDCG@10, test used once; same base hyper-parameters, schedule, budget and seed for every",
        "configuration (the command below).",
        *(["", "**Quick smoke run (tiny models, few epochs, a data slice): not comparable with the papers.**"]
          if quick else []),
        "",
    ]
    body = []
    for r in rows:
        if "skipped" in r:
            body.append([r["config"], *["–"] * len(COLS), "–", f"skipped: {r['skipped']}"])
            continue
        t = r["test"]
        fit = f"{r['best_epoch']}/{r['epochs']} ep, {r['train_minutes']} min" if "epochs" in r else "no training"
        body.append([label(r), *(fmt(t[c]) for c in COLS), fmt(r["valid"]["ndcg@10"]), fit])
    body += [[f"*{p[0]}* (published)", *p[1:7], "–", p[7] if len(p) > 7 else ""] for p in published_rows(provenance)]
    out += table(["configuration", *[c.upper() for c in COLS], "valid NDCG@10", "training"], body)
    out += ["", "Published rows: from the data set's PROVENANCE.md; S3-Rec/ICLRec/ICSRec code zeroes the seen items'",
            "scores instead of removing them."]
    return [*out, *commands(rows), ""]


def best_section(rows: list[dict], beauty: Path) -> list[str]:
    """The candidates for the best Beauty configuration, trained on the longer schedule of configs/beauty.toml."""
    out = ["## Amazon Beauty: candidates for the best configuration (60-epoch cosine schedule)", ""]
    if not rows:
        return [*out, "Not run yet: `bench/zoo.py --only sasrec+text ...` with configs/beauty.toml's schedule.", ""]
    body = []
    for path in sorted(beauty.parent.glob(beauty.stem + "*.json")):  # plain SASRec from bench/beauty.py
        b = json.loads(path.read_text())["result"]
        loss = ", ".join(loss_overrides(b["overrides"]))
        minutes = b.get("total_train_minutes", round(b["train_seconds"] / 60, 1))
        body.append([f"sasrec{f' ({loss})' if loss else ''} — {path.name}", *(fmt(b[c]) for c in COLS),
                     fmt(b["valid_ndcg@10"]), f"{b['best_epoch']}/{b['epochs']} ep, {minutes} min"])
    for r in rows:
        t = r["test"]
        body.append([label(r), *(fmt(t[c]) for c in COLS), fmt(r["valid"]["ndcg@10"]),
                     f"{r['best_epoch']}/{r['epochs']} ep, {r['train_minutes']} min ({r['stopped_by']})"])
    out += ["Same protocol as the zoo; d=64, 2 layers, dropout 0.5, CE, lr 2e-3 cosine over 60 epochs, warm-up 100",
            "steps, patience 10. Pick on the validation column; the test column is reported once.", ""]
    out += table(["configuration", *[c.upper() for c in COLS], "valid NDCG@10", "training"], body)
    return [*out, *commands(rows), ""]


# Published full-ranking BERT4Rec figures on this Beauty version (leave-one-out, ~12.1k items): the paper's own
# Beauty table ranks 100 sampled negatives, so these come from later full-ranking tables; references, not tuned on.
BERT4REC_REFERENCES = [
    ["*BERT4Rec, re-reported in the DuoRec / FEARec Beauty tables*", "–", "–", ".0401", ".0254", "–", "–", "–",
     "their column labels are inconsistent (BPR-MF's NDCG@10 < HR@10 / log2 11): indicative"],
    ["*BERT4Rec, RecBole 1.2 run, 5-core Beauty (kanishkaRandunu/pswrec2k26)*", ".0242", ".0158", ".0404", ".0211",
     "–", "–", "–", "public run, not a paper"],
]


def long_section(rows: list[dict]) -> list[str]:
    """Each model on a schedule long enough for its objective (issue 17, item 6), beside the published rows."""
    out = ["## Amazon Beauty: long schedules (each model's ceiling, not what 7 minutes buy)", ""]
    if not rows:
        return [*out, "Not run yet: `bench/zoo.py --only bert4rec --max-minutes 60 --set train.epochs=250 ...`.", ""]
    body = []
    for r in rows:
        sets = [w for w in set_overrides(r) if w.startswith(("model.", "loss.", "text.", "train.seed"))]
        name = f"{r['config']} ({', '.join(s.split('.', 1)[1] for s in sets)})" if sets else r["config"]
        body.append([name, *(fmt(r["test"][c]) for c in COLS), fmt(r["valid"]["ndcg@10"]),
                     f"{r['best_epoch']}/{r['epochs']} ep, {r['train_minutes']} min ({r['stopped_by']})"])
    body += BERT4REC_REFERENCES
    out += ["Same protocol as the zoo (seen items removed, selected on validation NDCG@10, test once); the schedule",
            "and budget are in each command below. Pick between rows on the validation column.", ""]
    out += table(["configuration", *[c.upper() for c in COLS], "valid NDCG@10", "training"], body)
    return [*out, *commands(rows), ""]


def ablation_section(rows: list[dict]) -> list[str]:
    out = ["## Augmentation ablation (SASRec, Beauty)", ""]
    if not rows:
        return [*out, "Not run yet: `bench/augment_ablation.py`.", ""]
    base = next((r for r in rows if r.get("variant") == "none"), None)
    body = []
    for r in rows:
        d = r["valid"]["ndcg@10"] - base["valid"]["ndcg@10"] if base else None
        body.append([r.get("variant", r["config"]), fmt(r["valid"]["hr@10"]), fmt(r["valid"]["ndcg@10"]),
                     f"{d:+.4f}" if d is not None else "–", fmt(r["test"]["hr@10"]), fmt(r["test"]["ndcg@10"]),
                     f"{r['best_epoch']}/{r['epochs']}"])
    out += table(["operator", "valid HR@10", "valid NDCG@10", "Δ valid NDCG@10 vs none", "test HR@10",
                  "test NDCG@10", "best/epochs"], body)
    out += ["", "Choose the operator on validation (the Δ column), never on test."]
    return [*out, *commands(rows), ""]


def pretrain_section(rows: list[dict], title: str = "Pre-training -> fine-tuning (Taobao, next purchase)",
                     missing: str = "Not run yet: `bench/pretrain_finetune.py`.") -> list[str]:
    out = [f"## {title}", ""]
    if not rows:
        return [*out, missing, ""] if missing else []
    body = []
    for r in rows:
        t, v = r["test"], r["valid"]
        ci = t.get("ci95", {}).get("ndcg@10")
        before = r.get("valid_before") or {}
        body.append([r["config"], fmt(r.get("trainable_params")), fmt(before.get("ndcg@10")), fmt(v["ndcg@10"]),
                     fmt(v["mrr"]), fmt(t["hr@10"]), fmt(t["ndcg@10"]), f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "–",
                     fmt(t["mrr"]), f"{r['best_epoch']}/{r['epochs']}" if "epochs" in r else "–"])
    n = rows[0].get("test_n")
    out += [f"Target: the next purchase, all behaviours as context; seen items kept in the ranking; {n} test users.",
            *([f"{rows[0]['test_target_in_history']:.0%} of the test purchases were of an item already in the user's"
               " history (repeat consumption)."] if "test_target_in_history" in rows[0] else []),
            ""]
    out += table(["configuration", "trainable params", "valid NDCG@10 before", "valid NDCG@10", "valid MRR",
                  "test HR@10", "test NDCG@10", "test NDCG@10 95% CI", "test MRR", "best/epochs"], body)
    return [*out, *commands(rows), ""]


def cold_section(rows: list[dict]) -> list[str]:
    out = ["## Cold start (Beauty, items hidden from training)", ""]
    if not rows:
        return [*out, "Not run yet: `bench/cold_start.py`.", ""]
    r0 = rows[0]
    out += [f"{r0['hidden_items']} items hidden; {r0['cold_test_examples']} test targets are hidden items,"
            f" {r0['warm_test_examples']} are not.", ""]
    n_items = r0.get("n_items", 12101)
    out += [f"A random ranking would score HR@10 ≈ {10 / n_items:.4f} and HR@20 ≈ {20 / n_items:.4f} on the cold"
            " targets.", ""]
    body = []
    for r in rows:
        drop = (r.get("text") or {}).get("id_dropout")
        name = f"{r['config']} (id dropout {drop})" if drop else r["config"]
        borrowed = f"{name}, cold items = mean of {r.get('neighbours', 10)} title neighbours"
        for suffix, what in (("", name), ("_neighbours", borrowed)):
            cold, warm = r.get(f"test_cold{suffix}"), r.get(f"test_warm{suffix}")
            if cold is not None:
                body.append([what, *(fmt(cold[k]) for k in ("hr@10", "ndcg@10", "hr@20")), fmt(warm["hr@10"]),
                             fmt(warm["ndcg@10"])])
    out += table(["model", "cold HR@10", "cold NDCG@10", "cold HR@20", "warm HR@10", "warm NDCG@10"], body)
    return [*out, *commands(rows), ""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--provenance", type=Path, default=SHARED / "amazon_beauty" / "PROVENANCE.md")
    ap.add_argument("--out", type=Path, default=RESULTS / "zoo.md")
    args = ap.parse_args(argv)
    r = args.results.resolve()
    lines = ["# Benchmarks: model zoo, augmentation, pre-training, item text", "",
             f"Generated by `{command_line(__file__, argv)}` from the JSON lines in {rel(r)}/;"
             " do not edit by hand.", ""]
    lines += zoo_section(read_lines(r / "zoo.jsonl"), args.provenance)
    lines += best_section(read_lines(r / "beauty_best.jsonl"), r / "beauty.json")
    lines += long_section(read_lines(r / "zoo_long.jsonl", key=lambda row: row.get("command", "")))
    lines += ablation_section(read_lines(r / "augment_ablation.jsonl"))
    lines += pretrain_section(read_lines(r / "pretrain_finetune.jsonl"))
    lines += pretrain_section(read_lines(r / "pretrain_finetune_ndcg_monitor.jsonl"),
                              "Same, earlier run selecting epochs on validation NDCG@10", missing="")
    lines += cold_section(read_lines(r / "cold_start.jsonl"))
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
