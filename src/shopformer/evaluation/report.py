"""Human-facing reports: a markdown metrics table and a metric@K plot, model beside baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shopformer.atomic import atomic_write, atomic_write_text
from shopformer.config import TaskConfig
from shopformer.evaluation.metrics import COVERAGE, metric_keys


def markdown_table(results: dict[str, dict], ks: tuple[int, ...], ci: bool = True, compact: bool = False) -> str:
    """Rows = systems (model and baselines, same examples). Columns: the registry's table metrics
    (``compact``: only @K for K = 10, or the largest K), coverage@max K when measured, then the
    primary NDCG@K on repeat targets (already in the user's history) and on explore targets (new
    to the user), with their shares in the header."""
    kk = 10 if 10 in ks else max(ks)
    cols = metric_keys((kk,) if compact else ks, table=True)
    first = next(iter(results.values()), {})
    if f"{COVERAGE}@{max(ks)}" in first:
        cols.append(f"{COVERAGE}@{max(ks)}")
    split = [part for part in ("repeat", "explore") if part in first]
    head = [_header(c) for c in cols] + [f"NDCG@{kk} {part} ({first[part].get('share', 0.0):.0%})" for part in split]
    lines = ["| system | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, m in results.items():
        cells = [_cell(m, c, ci) for c in cols]
        cells += [_cell(m[part], f"ndcg@{kk}", ci) if m.get(part, {}).get("n") else "–" for part in split]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _header(key: str) -> str:
    """"ndcg@10" -> "NDCG@10", "mrr" -> "MRR"; catalogue coverage keeps its word."""
    name, at, k = key.partition("@")
    return key if name == COVERAGE else f"{name.upper()}{at}{k}"


def _cell(m: dict, key: str, ci: bool) -> str:
    cell = f"{m.get(key, float('nan')):.4f}"
    if ci and key in m.get("ci95", {}):
        lo, hi = m["ci95"][key]
        cell += f" ({lo:.4f}–{hi:.4f})"
    return cell


def plot_metrics_at_k(results: dict[str, dict], ks: tuple[int, ...], path: str | Path, title: str) -> None:
    """Two panels (HR@K, NDCG@K), one line per system, with bootstrap CI bands when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("hr", "ndcg"), strict=True):
        for name, m in results.items():
            ys = [m.get(f"{metric}@{k}", float("nan")) for k in ks]
            (line,) = ax.plot(ks, ys, marker="o", label=name)
            if "ci95" in m and all(f"{metric}@{k}" in m["ci95"] for k in ks):
                lo = [m["ci95"][f"{metric}@{k}"][0] for k in ks]
                hi = [m["ci95"][f"{metric}@{k}"][1] for k in ks]
                ax.fill_between(ks, lo, hi, alpha=0.15, color=line.get_color())
        ax.set_xticks(list(ks))
        ax.set_xlabel("K")
        ax.set_title(f"{metric.upper()}@K")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def write_report(results: dict[str, dict], ks: tuple[int, ...], out_dir: str | Path, title: str,
                 protocol: str, warnings: list[str] | None = None) -> str:
    """Write report.md (warnings first, then the protocol and the table) and metrics_at_k.png;
    return the markdown table."""
    out = Path(out_dir)
    table = markdown_table(results, ks)
    warned = warnings_markdown(warnings or [])
    text = f"# {title}\n\n{warned}{protocol}\n\n{table}\n\n![metrics at K](metrics_at_k.png)\n"
    atomic_write_text(out / "report.md", text)
    plot_metrics_at_k(results, ks, out / "metrics_at_k.png", title)
    return table


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm / np.clip(cm.sum(1, keepdims=True), 1, None)  # row-normalised: recall on the diagonal
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.1 * len(names) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}\n{rows[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(rel: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_p, obs, count = (np.asarray(rel[k], dtype=float) for k in ("mean_prob", "observed", "count"))
    ok = count > 0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(mean_p[ok], obs[ok], marker="o", label="model")
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend()
    edges = np.linspace(0, 1, len(count) + 1)
    ax2.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.6)
    ax2.set_yscale("log")
    ax2.set_xlabel("predicted probability")
    ax2.set_ylabel("examples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_summary(metrics: dict, ks: tuple[int, ...] = (10,)) -> str:
    """Compact tables: next-target-behaviour ranking, any-behaviour ranking, next action, intent."""
    lines: list[str] = []
    target = metrics["target_behaviour"]
    for key, title in ((target, f"next item with behaviour '{target}'"), ("any", "next item, any behaviour")):
        rows = metrics["next_item"].get(key) or {}
        if not rows:
            continue
        n = next(iter(rows.values())).get("n", 0)
        lines += [f"**{title}** ({n} test examples)", "", markdown_table(rows, ks, ci=False, compact=True), ""]
    if "next_action" in metrics:
        rows = metrics["next_action"]
        lines += ["**next action**", "", "| system | accuracy | macro-F1 | " + " | ".join(
            f"recall {n}" for n in metrics["behaviours"]) + " |", "|---|---|---|" + "---|" * len(metrics["behaviours"])]
        for s, m in rows.items():
            rec = " | ".join("–" if m["per_class_recall"][n] is None else f"{m['per_class_recall'][n]:.3f}"
                             for n in metrics["behaviours"])
            lines.append(f"| {s} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {rec} |")
        lines.append("")
    if "intent" in metrics:
        lines += [f"**purchase intent** ('{target}' {TaskConfig(**metrics['task']).intent_text})", "",
                  "| system | ROC-AUC | PR-AUC | ECE | positive rate |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['ece']:.4f} | {m['positive_rate']:.3f} |"
                  for s, m in metrics["intent"].items()]
    return "\n".join(lines)


def plot_training_curve(history: list[dict], path: Path, monitor: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    key = f"valid_{monitor}"
    pts = [(r["epoch"], r[key]) for r in history if key in r]
    if pts:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*pts, strict=True), color="tab:orange", marker=".", label=f"validation {monitor}")
        ax2.set_ylabel(f"validation {monitor}", color="tab:orange")
    ax1.set_title("Training curve (best epoch chosen on validation)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def baseline_warnings(results: dict[str, dict], model: str, metric: str, where: str,
                      min_part: int = 100) -> list[str]:
    """One plain-words line for every baseline that scores above ``model`` on ``metric`` (all
    systems measured on the same examples): a model must never be silently below a heuristic.

    The same check then runs on the repeat targets (already in the user's history) and on the
    explore targets (new to the user) when both systems measured them on at least ``min_part``
    targets: a model that wins overall can still lose one kind of target to a heuristic (recent
    items on repeats, co-occurrence on discovery), and that must be said too.
    """
    out = _beaten(results, model, metric, where, "")
    for part in ("repeat", "explore"):
        own = results[model].get(part)
        # a metric that is not per example (catalogue coverage) has no subset value to compare
        if not isinstance(own, dict) or own.get("n", 0) < min_part or metric not in own:
            continue
        parts = {name: m[part] for name, m in results.items() if isinstance(m.get(part), dict) and m[part].get("n")}
        out += _beaten(parts, model, metric, where, f" on {part} targets ({own.get('share', 0.0):.0%} of them)")
    return out


def test_warnings(results: dict[str, dict], served: str, heuristics: list[str], metric: str,
                  where: str = "test") -> list[str]:
    """One line for every heuristic that scores above the served system (the model, or its blend) on
    the test examples. Reported, never used to choose: selection happened on validation, so a run
    that generalises worse than a baseline still says so (on a small test side the line's CI verdict
    and the split's noise warning say how much it weighs). Overall only: the repeat / explore lines
    come from validation."""
    rows = {name: results[name] for name in (served, *heuristics) if name in results}
    return _beaten(rows, served, metric, where, "") if served in rows else []


def _beaten(results: dict[str, dict], model: str, metric: str, where: str, subset: str) -> list[str]:
    own = results[model]
    score = float(own[metric])
    ci = own.get("ci95", {}).get(metric)
    out = []
    for name, m in results.items():
        if name == model or metric not in m or not float(m[metric]) > score:
            continue
        verdict = ("no CI computed" if not ci else "significantly: above the model's 95% CI"
                   if float(m[metric]) > ci[1] else "inside the model's 95% CI")
        advice = ("on these targets the heuristic ranks better than the model (one ranking serves both kinds; "
                  "the table's repeat / explore columns show the trade)" if subset else
                  "the heuristic is the better choice on this data until the model beats it")
        out.append(f"baseline '{name}' beats {model} on {where} {metric}{subset}: {float(m[metric]):.4f} vs "
                   f"{score:.4f} ({verdict}): {advice}")
    return out


def warnings_markdown(warnings: list[str]) -> str:
    """A "Warnings" section (empty string when there are none), placed above every table."""
    if not warnings:
        return ""
    return "## Warnings\n\n" + "".join(f"- **warning:** {w}\n" for w in warnings) + "\n"
