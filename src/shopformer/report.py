"""Human-facing reports: a markdown metrics table and a metric@K plot, model beside baselines."""

from __future__ import annotations

from pathlib import Path

from shopformer.atomic import atomic_write, atomic_write_text


def markdown_table(results: dict[str, dict], ks: tuple[int, ...], ci: bool = True) -> str:
    """Rows = systems (model and baselines), columns = HR/NDCG@K, MRR, coverage@max K."""
    kmax = max(ks)
    cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr", f"coverage@{kmax}"]
    lines = ["| system | " + " | ".join(c.upper() if c == "mrr" else c for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, m in results.items():
        cells = []
        for c in cols:
            v = m.get(c, float("nan"))
            cell = f"{v:.4f}"
            if ci and c in m.get("ci95", {}):
                lo, hi = m["ci95"][c]
                cell += f" ({lo:.4f}–{hi:.4f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
                 protocol: str) -> str:
    """Write report.md and metrics_at_k.png; return the markdown."""
    out = Path(out_dir)
    table = markdown_table(results, ks)
    text = f"# {title}\n\n{protocol}\n\n{table}\n\n![metrics at K](metrics_at_k.png)\n"
    atomic_write_text(out / "report.md", text)
    plot_metrics_at_k(results, ks, out / "metrics_at_k.png", title)
    return table
