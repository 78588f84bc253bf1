"""A self-contained HTML report per run (``report.html`` next to ``report.md``): opens offline.

Inline CSS, inline SVG charts (``evaluation/report_svg.py``) and a few lines of inline script
(legend toggles, sortable tables); no URL, font or script from elsewhere. Sections, each shown
when its data exist in the run's experiment folder:

* ranking metrics with 95% CIs (next-item ``metrics.json["test"]``, or multi-behaviour
  ``["next_item"]`` per behaviour) and the repeat / explore split of each;
* next action and purchase intent tables (multi-behaviour runs);
* training curves (``train_log.csv``);
* applications recorded by the CLI commands in ``applications/<kind>.json`` (``record_application``):
  churn (metrics + calibration curve), forecast (vs actual per origin, top series with intervals),
  trends (rank correlation per origin), explanations;
* example explanations computed now by ``Recommender.explain`` for a few users of the run's data set.
"""

from __future__ import annotations

import csv
import json
import math
from html import escape
from pathlib import Path

from shopformer.atomic import atomic_write_text
from shopformer.evaluation.report_svg import SCRIPT, STYLE, bar_chart, fmt, line_chart, table

APPS = "applications"


def report_dir(run: str | Path) -> Path:
    """The experiment folder of a run: ``RUN`` itself, or its parent when ``RUN`` is the ``model``
    directory of an experiment folder (one with ``report.md`` or ``metrics.json`` beside it)."""
    p = Path(run)
    if (p / "manifest.json").exists() and ((p.parent / "report.md").exists() or (p.parent / "metrics.json").exists()
                                           or (p.parent / APPS).is_dir()):
        return p.parent
    return p


def record_application(run: str | Path, kind: str, metrics: dict) -> Path | None:
    """Keep an application's metrics in ``<experiment folder>/applications/<kind>.json`` and refresh
    ``report.html`` there; returns the JSON path. A bare model directory (no experiment folder around
    it, e.g. a registry version, which is immutable) is left alone: None."""
    out = report_dir(run)
    if out == Path(run) and (out / "manifest.json").exists():
        return None
    path = atomic_write_text(out / APPS / f"{kind}.json", json.dumps(metrics, indent=1, default=float))
    write_html_report(out, examples=0 if kind.startswith("explain") else 3)
    return path


def _ci(m: dict, key: str) -> str:
    lo_hi = (m.get("ci95") or {}).get(key)
    v = fmt(m.get(key))
    return f'{v} <span class="ci-t">[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]</span>' if lo_hi else v


def ranking_tables(metrics: dict) -> dict[str, dict[str, dict]]:
    """Title -> {system: metrics} for every ranking table of a run's metrics.json."""
    if isinstance(metrics.get("test"), dict):
        return {"next item (test)": metrics["test"]}
    out = {}
    for beh, rows in (metrics.get("next_item") or {}).items():
        if isinstance(rows, dict) and rows:
            out[f"next item, {'any behaviour' if beh == 'any' else f'behaviour {beh!r}'} (test)"] = rows
    return out


def _metric_keys(rows: dict[str, dict]) -> list[str]:
    first = next(iter(rows.values()))
    return [k for k, v in first.items() if isinstance(v, int | float) and ("@" in k or k == "mrr")]


def ranking_section(metrics: dict) -> str:
    parts = []
    for title, rows in ranking_tables(metrics).items():
        rows = {s: m for s, m in rows.items() if isinstance(m, dict)}
        if not rows:
            continue
        keys = _metric_keys(rows)
        head = next((k for k in ("ndcg@10", "hr@10", "mrr") if k in keys), keys[0] if keys else None)
        n = next(iter(rows.values())).get("n")
        parts.append(f"<h3>{escape(title)}{f' — {n:,} examples' if isinstance(n, int) else ''}</h3>")
        parts.append(table(["system", *keys], [[escape(s), *(_ci(m, k) for k in keys)] for s, m in rows.items()],
                           raw=True))
        if head is None:
            continue
        ci = [(m.get("ci95") or {}).get(head) for m in rows.values()]
        chart = bar_chart(list(rows), [float(m.get(head, math.nan)) for m in rows.values()],
                          [c[0] if c else None for c in ci], [c[1] if c else None for c in ci],
                          f"{head} with 95% CI", head)
        split = [[escape(s), fmt(m.get(head)), fmt((m.get("repeat") or {}).get(head)),
                  fmt((m.get("explore") or {}).get(head)), fmt((m.get("repeat") or {}).get("share"), 3)]
                 for s, m in rows.items() if "repeat" in m or "explore" in m]
        parts.append(f'<div class="charts">{chart}</div>')
        if split:
            parts.append(table(["system", f"{head} all", f"{head} repeat targets", f"{head} explore targets",
                                "repeat share"], split, raw=True, caption="repeat (the target is in the history) / "
                                                                          "explore (new to the user)"))
    return "".join(parts)


def heads_section(metrics: dict) -> str:
    parts = []
    act = metrics.get("next_action") or {}
    if act:
        names = list(metrics.get("behaviours") or next(iter(act.values())).get("labels", []))
        rows = [[s, fmt(m.get("accuracy")), fmt(m.get("macro_f1")),
                 *(fmt((m.get("per_class_recall") or {}).get(n)) for n in names)] for s, m in act.items()]
        parts += ["<h3>next action</h3>", table(["system", "accuracy", "macro-F1", *(f"recall {n}" for n in names)],
                                                rows)]
    intent = metrics.get("intent") or {}
    if intent:
        rows = [[s, fmt(m.get("roc_auc")), fmt(m.get("pr_auc")), fmt(m.get("ece")), fmt(m.get("positive_rate"), 3)]
                for s, m in intent.items()]
        parts += ["<h3>purchase intent</h3>", table(["system", "ROC-AUC", "PR-AUC", "ECE", "positive rate"], rows)]
        rel = {s: m["reliability"] for s, m in intent.items() if isinstance(m.get("reliability"), dict)}
        if rel:
            parts.append(line_chart({s: (r["mean_prob"], r.get("observed") or r.get("frac_pos") or [])
                                     for s, r in rel.items() if len(r.get("observed") or r.get("frac_pos") or [])
                                     == len(r["mean_prob"])}, "intent calibration", "predicted", "observed",
                                    diagonal=True))
    return "".join(parts)


def training_section(out: Path) -> str:
    path = out / "train_log.csv"
    if not path.exists():
        return ""
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ""

    def col(name: str) -> list[float | None]:
        return [float(r[name]) if r.get(name) not in (None, "") else None for r in rows]

    epochs = [float(e) for e in col("epoch") if e is not None]
    valid = [c for c in rows[0] if c.startswith("valid_")]
    keep = [c for c in valid if c.endswith("@10") or c == "valid_mrr"][:4] or valid[:4]
    charts = [line_chart({"training loss": (epochs, col("loss"))}, "training loss", "epoch", "loss")]
    if keep:
        charts.append(line_chart({c[6:]: (epochs, col(c)) for c in keep}, "validation", "epoch", "metric"))
    return f'<div class="charts">{"".join(charts)}</div>'


def churn_part(kind: str, m: dict) -> str:
    systems = m.get("systems") or {}
    rows = [[s, fmt(x.get("roc_auc")), fmt(x.get("pr_auc")), fmt(x.get("ece")), fmt(x.get("log_loss")),
             fmt(x.get("positive_rate"), 3), fmt(x.get("n"))] for s, x in systems.items()]
    curves = {s: (x["reliability"]["mean_prob"], x["reliability"]["observed"]) for s, x in systems.items()
              if isinstance(x.get("reliability"), dict) and "observed" in x["reliability"]}
    return (f"<h3>{escape(kind)}: no {escape(str(m.get('churn_of', 'event')))} within {fmt(m.get('days'), 3)} days"
            f"</h3>" + table(["system", "ROC-AUC", "PR-AUC", "ECE", "log-loss", "churn rate", "users"], rows)
            + f'<div class="charts">{line_chart(curves, "churn calibration", "predicted", "observed", diagonal=True)}'
            "</div>")


def forecast_part(kind: str, m: dict) -> str:
    origins = m.get("origins") or []
    xs = list(range(1, len(origins) + 1))
    series: dict[str, tuple[list[int], list[float | None]]] = {"actual": (xs, [o.get("actual_total_all_series")
                                                                              for o in origins])}
    for name in (origins[0].get("predicted_totals") or {}) if origins else {}:
        series[name] = (xs, [(o.get("predicted_totals") or {}).get(name) for o in origins])
    summary = m.get("summary") or {}
    rows = [[s, fmt(x["all"]["wape"]), fmt(x["all"]["mase"]), fmt((x.get("head") or {}).get("wape")),
             fmt((x.get("tail") or {}).get("wape"))] for s, x in summary.items() if "all" in x]
    top = origins[-1].get("top_series", []) if origins else []
    top_rows = [[t["series"], fmt(t["actual"], 1), fmt(t["expected"], 2), f"{fmt(t['lo'], 0)} – {fmt(t['hi'], 0)}"]
                for t in top]
    return (f"<h3>{escape(kind)}: {escape(str(m.get('behaviour')))} per {escape(str(m.get('level')))}, "
            f"horizon {fmt(m.get('horizon_seconds', 0) / 86400, 2)} d</h3>"
            f"<p>WAPE ratio to the best baseline ({escape(str(m.get('best_baseline')))}): "
            f"{fmt(m.get('wape_ratio_to_best_baseline'), 3)}; interval coverage {fmt(m.get('coverage'), 3)} "
            f"(nominal {fmt(m.get('interval'), 2)})</p>"
            + table(["system", "WAPE", "MASE", "WAPE head", "WAPE tail"], rows)
            + '<div class="charts">' + line_chart(series, "forecast vs actual (total over series)", "test origin",
                                                  "events", [(x, str(x)) for x in xs]) + "</div>"
            + (table(["series", "actual", "expected", "interval"], top_rows,
                     caption="last test origin: the series with the largest forecast") if top_rows else ""))


def trends_part(kind: str, m: dict) -> str:
    summary = m.get("summary") or {}
    rows = [[s, fmt(x.get("spearman")), fmt(x.get("precision_risers"), 3), fmt(x.get("precision_fallers"), 3)]
            for s, x in summary.items()]
    origins = m.get("origins") or []
    xs = list(range(1, len(origins) + 1))
    series = {s: (xs, [o["systems"].get(s, {}).get("spearman") for o in origins]) for s in summary}
    return (f"<h3>{escape(kind)}: growth of {escape(str(m.get('level')))} interest</h3>"
            + table(["system", "Spearman", "precision@K risers", "precision@K fallers"], rows)
            + f'<div class="charts">{line_chart(series, "Spearman per test origin", "test origin", "Spearman")}</div>')


def explain_part(kind: str, m: dict) -> str:
    rows = [[e["item"], e.get("explanation", ""), ", ".join(f"{r['behaviour'] or '?'} {r['item']} ({r['weight']:+.3f})"
                                                           for r in e.get("reasons", []))]
            for e in m.get("examples", [])]
    return f"<h3>{escape(kind)}: user {escape(str(m.get('user', '')))}</h3>" + table(["item", "why", "events"], rows)


PARTS = {"churn": churn_part, "forecast": forecast_part, "trends": trends_part, "explain": explain_part}


def applications_section(out: Path) -> str:
    parts = []
    for path in sorted((out / APPS).glob("*.json")) if (out / APPS).is_dir() else []:
        kind = path.stem
        fn = next((f for prefix, f in PARTS.items() if kind.startswith(prefix)), None)
        try:
            parts.append(fn(kind, json.loads(path.read_text())) if fn else "")
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as err:  # an older or foreign file
            parts.append(f'<p class="warn">{escape(path.name)}: not shown ({escape(type(err).__name__)}: '
                         f'{escape(str(err))})</p>')
    return "".join(parts)


def examples_section(out: Path, n: int) -> str:
    """Top-3 items of ``n`` users of the run's data set with ``Recommender.explain``'s reasons."""
    if n < 1 or not (out / "model" / "manifest.json").exists():
        return ""
    from shopformer.data.corpus import load_dataset
    from shopformer.recommender import History, Recommender, describe_reasons

    try:
        rec = Recommender.load(out / "model")
        ds = load_dataset(rec.run.manifest["dataset_dir"])
    except (OSError, KeyError, ValueError) as err:
        return f'<p class="muted">no example explanations: {escape(str(err))}</p>'
    s, v = ds.seq, ds.vocabs
    users = [u for u in range(s.n_users) if s.offsets[u + 1] - s.offsets[u] >= 5][:n]
    parts = []
    for u in users:
        lo, hi = max(int(s.offsets[u]), int(s.offsets[u + 1]) - rec.max_len), int(s.offsets[u + 1])
        h = History([v.items.tokens[i] for i in s.items[lo:hi]], [v.behaviours.tokens[b] for b in s.behaviours[lo:hi]],
                    [int(t) for t in s.times[lo:hi]] if s.has_time else None)
        top = rec.recommend(h.items, k=3, behaviours=h.behaviours, timestamps=h.timestamps)
        why = rec.explain(h, top.items, n=3)
        recent = ", ".join(f"{b} {i}" for i, b in zip(h.items[-6:], (h.behaviours or [])[-6:], strict=False))
        rows = [[item, fmt(score, 3), describe_reasons(w) or "no single event (popularity)"]
                for item, score, w in zip(top.items, top.scores, why, strict=True)]
        parts.append(f"<h3>user {escape(v.users.tokens[s.users[u]])}</h3><p class='muted'>last events: "
                     f"{escape(recent)}</p>" + table(["item", "score", "why"], rows))
    return "".join(parts)


def build_html(out: Path, examples: int = 3) -> str:
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    title = f"shopformer report: {out.name}"
    warnings = "".join(f'<div class="warn">{escape(str(w))}</div>' for w in metrics.get("warnings", []))
    protocol = f"<p>{escape(str(metrics['protocol']))}</p>" if metrics.get("protocol") else ""
    sections = [("Ranking metrics (95% CIs) and the repeat / explore split", ranking_section(metrics)),
                ("Next action and purchase intent", heads_section(metrics)),
                ("Training curves", training_section(out)),
                ("Applications", applications_section(out)),
                ("Example explanations", examples_section(out, examples))]
    body = "".join(f"<h2>{escape(h)}</h2>{s}" for h, s in sections if s)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{warnings}{protocol}"
            f"{body or '<p>nothing to show yet</p>'}<script>{SCRIPT}</script></body></html>\n")


def write_html_report(out_dir: str | Path, examples: int = 3) -> Path:
    """Write ``report.html`` into a run's experiment folder (atomically); returns its path."""
    out = report_dir(out_dir)
    return atomic_write_text(out / "report.html", build_html(out, examples))
