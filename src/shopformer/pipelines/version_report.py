"""A registry version's report: drift over time, validation metrics per version, gate decisions.

    write_version_report(registry, "v0003")
    -> registry/versions/v0003/report/{report.md, drift.png, validation.png, gate.png, history.json}

The report covers every version up to and including the given one (in id order), from their
manifests (``version.json``): the drift of each retrain's new events against its parent's training
window (unknown-item share, behaviour PSI / Jensen-Shannon), the shift of its top-1 score
distribution against its parent's on the same gate-slice histories (score PSI / Jensen-Shannon,
``gate.score_shift``), the selection-slice metrics, and each
gate decision (candidate - current on the gate slice with its 95% CI, passed or not, and the
version's status). ``retrain`` writes it for every candidate; ``shopformer models report`` (re)writes it.

Atomic: the files are written into a fresh ``.report-*`` folder, which a ``report`` symlink is then
switched to (one rename); readers see the old report or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from shopformer.atomic import fsync_dir
from shopformer.pipelines.registry import Registry

REPORT = "report"
DRIFT_KEYS = ("unknown_item_share", "behaviour_psi", "behaviour_js", "score_psi", "score_js")


def history(registry: Registry, upto: str) -> list[dict]:
    """One row per version up to ``upto``: data end, drift, validation, gate and status."""
    rows = []
    for v in registry.version_ids():
        if v > upto:
            break
        m = registry.read(v)
        gate = m.get("gate") or {}
        comp = next(iter((gate.get("comparisons") or {}).values()), None)
        rows.append({
            "version": v, "parent": m.get("parent"), "kind": m.get("kind"), "status": m.get("status"),
            "reason": m.get("reason", ""), "data_end_utc": (m.get("data_window") or {}).get("end_utc"),
            "events": (m.get("events") or {}).get("total"),
            "drift": {k: (m.get("drift") or {}).get(k) for k in DRIFT_KEYS},
            "validation": {k: v for k, v in (m.get("validation") or {}).items() if isinstance(v, int | float)},
            "gate": {"metric": gate.get("metric"), "passed": gate.get("passed"), "examples": gate.get("examples"),
                     "diff": comp.get("diff") if comp else None, "ci95": comp.get("ci95") if comp else None,
                     "reasons": gate.get("reasons", [])} if gate else None,
        })
    return rows


def _plots(rows: list[dict], out: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["version"] for r in rows]
    x = list(range(len(rows)))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in DRIFT_KEYS:
        ys = [r["drift"][key] for r in rows]
        ax.plot([i for i, y in zip(x, ys, strict=True) if y is not None], [y for y in ys if y is not None],
                marker="o", label=key)
    ax.axhline(0.25, color="grey", lw=0.8, ls="--", label="PSI 0.25 (real shift)")
    ax.set_xticks(x, names)
    ax.set_title("Drift vs the parent: new events (items, behaviour mix), top-1 scores", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in (metric, "hr@10", "ndcg@10"):
        ys = [r["validation"].get(key) for r in rows]
        if any(y is not None for y in ys) and key not in [ln.get_label() for ln in ax.get_lines()]:
            ax.plot([i for i, y in zip(x, ys, strict=True) if y is not None], [y for y in ys if y is not None],
                    marker="o", label=key)
    ax.set_xticks(x, names)
    ax.set_title("Validation (selection slice) per version")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "validation.png", dpi=100)
    plt.close(fig)

    colours = {"promoted": "tab:green", "rejected": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, r in enumerate(rows):
        g = r["gate"]
        if not g or g["diff"] is None:
            continue
        lo, hi = g["ci95"] or (g["diff"], g["diff"])
        ax.errorbar([i], [g["diff"]], yerr=[[g["diff"] - lo], [hi - g["diff"]]], fmt="o", capsize=4,
                    color=colours.get(r["status"], "tab:grey"))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_title(f"Gate: candidate - current {metric}, 95% CI (green promoted, red rejected)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "gate.png", dpi=100)
    plt.close(fig)


def _markdown(rows: list[dict], version: str, metric: str) -> str:
    def f(x: object) -> str:
        return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))

    lines = [f"# Model registry report: {version}", "",
             "Every version up to this one, from their manifests (`version.json`).", "",
             "| version | kind | status | data end (UTC) | events | unknown-item share | behaviour PSI | "
             f"behaviour JS | score PSI | score JS | validation {metric} | gate diff [95% CI] | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, d = r["gate"] or {}, r["drift"]
        ci = g.get("ci95")
        gate_diff = f"{f(g.get('diff'))} [{f(ci[0])}, {f(ci[1])}]" if ci else f(g.get("diff"))
        verdict = "" if not g else ("passed" if g.get("passed") else "failed: " + "; ".join(g.get("reasons") or []))
        lines.append(f"| {r['version']} | {f(r['kind'])} | {f(r['status'])} | {f(r['data_end_utc'])} | "
                     f"{f(r['events'])} | {f(d['unknown_item_share'])} | {f(d['behaviour_psi'])} | "
                     f"{f(d['behaviour_js'])} | {f(d['score_psi'])} | {f(d['score_js'])} | "
                     f"{f(r['validation'].get(metric))} | {gate_diff} | {verdict} |")
    lines += ["", "![drift](drift.png)", "", "![validation](validation.png)", "", "![gate](gate.png)", ""]
    return "\n".join(lines)


def write_version_report(registry_root: str | Path, version: str | None = None) -> Path:
    """Write (or rewrite) the report of ``version`` (default: the newest); returns its folder."""
    registry = Registry(registry_root)
    ids = registry.version_ids()
    if not ids:
        raise FileNotFoundError(f"{registry.root}: no versions")
    version = version or ids[-1]
    vdir = registry.version_dir(version)
    rows = history(registry, version)
    metric = (rows[-1]["gate"] or {}).get("metric") or "ndcg@10"
    tmp = vdir / f".{REPORT}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _plots(rows, tmp, metric)
        (tmp / "report.md").write_text(_markdown(rows, version, metric))
        (tmp / "history.json").write_text(json.dumps(rows, indent=1) + "\n")
        for p in tmp.iterdir():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        link = vdir / REPORT
        old = Path(os.readlink(link)) if link.is_symlink() else None
        staged = vdir / f".{REPORT}-link-{secrets.token_hex(4)}"
        staged.symlink_to(tmp.name)
        os.replace(staged, link)  # the switch
        fsync_dir(vdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None and old.name != tmp.name:
        shutil.rmtree(vdir / old.name, ignore_errors=True)
    return link
