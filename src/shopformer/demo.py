"""`make demo`: the whole pipeline on the bundled Taobao slice, in a few minutes on 2 cores.

prepare -> train (early stopping on validation, time budget) -> test against popularity and
Markov -> metrics table, three example users with their top-5, report files.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from shopformer.config import load_config
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.experiment import load_dataset, run_experiment
from shopformer.recommender import History, Recommender

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo" / "taobao_head300.csv"
DEMO_CONFIG = ROOT / "configs" / "demo.toml"
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")


def run_demo(out: Path, max_minutes: float, console: Console) -> None:
    if not DEMO_DATA.exists():
        raise FileNotFoundError(f"demo data not found at {DEMO_DATA} (run from a source checkout)")
    console.rule("1. prepare")
    prepared = prepare([DEMO_DATA], out / "dataset", IngestOptions(columns=TAOBAO_COLUMNS), overwrite=True)
    s = prepared.stats
    console.print(f"{DEMO_DATA.name}: {s.get('users')} users, {s.get('items')} items, {s.get('events')} events, "
                  f"behaviours {s.get('behaviours')}; rejected rows: {s.get('rows_rejected', 0)}")
    console.rule("2. train (early stopping on validation) and 3. evaluate on test")
    cfg = load_config(DEMO_CONFIG).override(train={"max_minutes": max_minutes})
    ds = load_dataset(prepared.path)
    res = run_experiment(ds, cfg, out)
    console.print(res.table)
    console.print(f"trained {res.fit.epochs} epochs (best {res.fit.best_epoch}, stopped by {res.fit.stopped_by}) "
                  f"in {res.fit.train_seconds:.0f}s")
    console.rule("4. example users: recent history -> top-5 next items")
    show_examples(ds, Recommender.load(res.run_dir), console)
    console.print(f"\nreport: {out / 'report.md'}  plot: {out / 'metrics_at_k.png'}  "
                  f"curve: {out / 'training_curve.png'}  model: {res.run_dir}")
    console.print(f"try: shopformer recommend {res.run_dir} --user {ds.vocabs.users.tokens[1]} -k 5")


def show_examples(ds, rec: Recommender, console: Console, n_users: int = 3, shown: int = 6) -> None:
    seq, v = ds.seq, ds.vocabs
    for row in range(min(n_users, seq.n_users)):
        a, b = seq.offsets[row], seq.offsets[row + 1]
        items = v.items.decode(seq.items[a:b])
        behs = v.behaviours.decode(seq.behaviours[a:b])
        times = seq.times[a:b].tolist() if seq.has_time else None
        top = rec.recommend_many([History(items, behs, times)], k=5)[0]
        table = Table(title=f"user {v.users.tokens[seq.users[row]]} ({b - a} events)", show_lines=False)
        table.add_column("recent history (oldest first)")
        table.add_column("top-5 next")
        recent = [f"{i} ({e})" for i, e in zip(items[-shown:], behs[-shown:], strict=True)]
        recs = [f"{i}  {sc:.2f}" for i, sc in top.pairs()]
        for r in range(max(len(recent), len(recs))):
            table.add_row(recent[r] if r < len(recent) else "", recs[r] if r < len(recs) else "")
        console.print(table)
