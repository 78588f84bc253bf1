"""What the Overview page says about the served run, read from its own files once per version:
``metrics.json`` (test metrics with CIs beside the baselines, repeat / explore split, warnings),
``train_log.csv`` (the training curve) and the data set's ``stats.json`` (the data window).

Next-item runs keep test metrics under ``test[system]``; multi-behaviour runs under
``next_item[behaviour][system]``. Both carry ``ci95`` and ``repeat`` / ``explore`` per system.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

HEADLINE = ("hr@10", "ndcg@10", "mrr")


def utc(ts: float | int | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if ts is None or not math.isfinite(float(ts)):
        return "-"
    return time.strftime(fmt, time.gmtime(float(ts)))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ranking_tables(metrics: dict) -> list[tuple[str, dict[str, dict]]]:
    """[(what the table is about, {system: its metrics})]: the test table of a next-item run; the
    any-behaviour and the target-behaviour tables of a multi-behaviour run."""
    if isinstance(metrics.get("test"), dict) and metrics["test"]:
        return [("next item (test split)", metrics["test"])]
    per_beh = metrics.get("next_item")
    if not isinstance(per_beh, dict) or not per_beh:
        return []
    first = "any" if "any" in per_beh else next(iter(per_beh))
    names = [first] + [b for b in (metrics.get("target_behaviour"),) if isinstance(b, str) and b in per_beh
                       and b != first]
    return [(f"next item, behaviour {b} (test split)" if b != "any" else "next item, any behaviour (test split)",
             per_beh[b]) for b in names]


def _cell(m: dict, name: str) -> dict[str, Any]:
    value, ci = m.get(name), (m.get("ci95") or {}).get(name)
    return {"value": value if isinstance(value, int | float) else None,
            "lo": ci[0] if isinstance(ci, list) and len(ci) == 2 else None,
            "hi": ci[1] if isinstance(ci, list) and len(ci) == 2 else None}


def headline(about: str, systems: dict[str, dict], model_name: str) -> dict[str, Any]:
    """Rows of one metric table (model first, then baselines by HR@10) and its repeat / explore split."""
    systems = {k: v for k, v in systems.items() if isinstance(v, dict)}
    if not systems:
        return {"about": "", "rows": [], "split": [], "metrics": HEADLINE}
    names = [n for n in HEADLINE if any(n in s for s in systems.values())]
    model_rows = [k for k in systems if k == model_name or k.startswith(model_name)] or [next(iter(systems))]
    others = sorted((k for k in systems if k not in model_rows), key=lambda k: -(systems[k].get("hr@10") or 0.0))
    rows = [{"system": k, "model": k in model_rows, "served": k == model_rows[0], "n": systems[k].get("n"),
             "cells": [_cell(systems[k], n) for n in names]} for k in [*model_rows, *others]]
    split = []
    for k in [*model_rows[:1], *others[:2]]:
        for part in ("repeat", "explore"):
            sub = systems[k].get(part)
            if isinstance(sub, dict):
                split.append({"system": k, "part": part, "share": sub.get("share"), "n": sub.get("n"),
                              "hr10": _cell(sub, "hr@10"), "model": k in model_rows})
    return {"about": about, "rows": rows, "split": split, "metrics": names}


def _column(rows: list[dict[str, str]], name: str) -> list[float | None]:
    out: list[float | None] = []
    for r in rows:
        try:
            out.append(float(r[name]))
        except (KeyError, TypeError, ValueError):
            out.append(None)
    return out


def training_curve(run_dir: Path) -> dict[str, Any]:
    """Loss and the first validation metric per epoch from ``train_log.csv`` (beside or above the run)."""
    for path in (run_dir / "train_log.csv", run_dir.parent / "train_log.csv"):
        if path.exists():
            try:
                with path.open(newline="") as f:
                    rows = list(csv.DictReader(f))
            except (OSError, csv.Error):
                return {}
            if not rows:
                return {}
            cols = list(rows[0])
            metric = next((c for c in ("valid_ndcg@10", "valid_hr@10") if c in cols),
                          next((c for c in cols if c.startswith("valid_")), None))
            series = {"loss": _column(rows, "loss")} if "loss" in cols else {}
            if metric:
                series[metric] = _column(rows, metric)
            return {"series": series, "epochs": [r.get("epoch", str(i + 1)) for i, r in enumerate(rows)]}
    return {}


def data_window(manifest: dict, metrics: dict) -> dict[str, Any]:
    stats = read_json(Path(manifest["dataset_dir"]) / "stats.json") if manifest.get("dataset_dir") else {}
    split = metrics.get("split") if isinstance(metrics.get("split"), dict) else {}
    return {"start": utc(stats.get("time_min")), "end": utc(stats.get("time_max")), "events": stats.get("events"),
            "users": stats.get("users"), "valid_start": utc(split.get("valid_start")) if split else "-",
            "test_start": utc(split.get("test_start")) if split else "-",
            "has_time": stats.get("has_time", stats.get("time_min") is not None)}


def run_summary(run_dir: Path, manifest: dict, metrics: dict, model_name: str) -> dict[str, Any]:
    """Everything the Overview shows about one run (cached per served version by the caller)."""
    found = metrics.get("warnings")
    warnings: list = found if isinstance(found, list) else []
    tables = [headline(about, systems, model_name) for about, systems in ranking_tables(metrics)]
    return {"headlines": [t for t in tables if t["rows"]], "curve": training_curve(run_dir),
            "window": data_window(manifest, metrics), "warnings": [str(w) for w in warnings],
            "created": manifest.get("created", "-"), "protocol": str(metrics.get("protocol", ""))}
