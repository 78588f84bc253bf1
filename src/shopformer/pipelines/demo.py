"""`make demo`: the whole pipeline on the bundled Taobao slice, in a few minutes on 2 cores.

prepare -> train one behaviour-aware encoder with its task heads (early stopping on the validation
window; a budget of epochs, so the numbers are the same on a busy and an idle machine) -> test every
head beside the baselines on the last days -> tables, three example users (likely purchases, likely
next items, next-action probabilities, purchase intent), report files.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from shopformer.config import load_config
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.multi_behaviour import run_multibehaviour
from shopformer.recommender import ANY_BEHAVIOUR, History, Recommendations, Recommender, describe_actions

ROOT = Path(__file__).resolve().parents[3]
DEMO_DATA = ROOT / "data" / "demo" / "taobao_head300.csv"
DEMO_CONFIG = ROOT / "configs" / "demo.toml"
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behaviour", "timestamp")


def run_demo(out: Path, console: Console, epochs: int | None = None, max_minutes: float | None = None) -> None:
    """``epochs`` overrides the config's; ``max_minutes`` is an optional wall-clock safety net
    (reported as a warning when it cuts training)."""
    if not DEMO_DATA.exists():
        raise FileNotFoundError(f"demo data not found at {DEMO_DATA} (run from a source checkout)")
    console.rule("1. prepare")
    prepared = prepare([DEMO_DATA], out / "dataset", IngestOptions(columns=TAOBAO_COLUMNS), overwrite=True)
    s = prepared.stats
    console.print(f"{DEMO_DATA.name}: {s.get('users')} users, {s.get('items')} items, {s.get('events')} events, "
                  f"behaviours {s.get('behaviours')}; rejected rows: {s.get('rows_rejected', 0)}")
    console.rule("2. train (early stopping on the validation window) and 3. evaluate every head on the test window")
    train = {"max_minutes": max_minutes, **({"epochs": epochs} if epochs is not None else {})}
    cfg = load_config(DEMO_CONFIG).override(train=train)
    ds = load_dataset(prepared.path)
    res = run_multibehaviour(ds, cfg, out)
    console.print(res.metrics["protocol"])
    console.print(res.table)
    fit = res.fits[cfg.model.name]
    console.print(f"trained {fit.epochs} epochs (best {fit.best_epoch}, stopped by {fit.stopped_by}) "
                  f"in {fit.train_seconds:.0f}s")
    for w in res.metrics.get("warnings", []):
        console.print(f"[bold yellow]warning:[/bold yellow] {w}", highlight=False)
    console.rule("4. example users: recent history -> what they will buy / look at next, next action, intent")
    rec = Recommender.load(res.run_dir)
    show_examples(ds, rec, console)
    console.print(f"\nreport: {out / 'report.md'}  plots: {out}/*.png  curve: {out / 'training_curve.png'}  "
                  f"model: {res.run_dir}")
    console.print(f"try: shopformer recommend {res.run_dir} --user {ds.vocabs.users.tokens[1]} -k 5 "
                  f"--behaviour {rec.target_behaviour}")


def show_examples(ds: Dataset, rec: Recommender, console: Console, n_users: int = 3, shown: int = 6) -> None:
    seq, v = ds.seq, ds.vocabs
    target = rec.target_behaviour
    for row in range(min(n_users, seq.n_users)):
        a, b = seq.offsets[row], seq.offsets[row + 1]
        items = v.items.decode(seq.items[a:b])
        behs = v.behaviours.decode(seq.behaviours[a:b])
        history = History(items, behs, seq.times[a:b].tolist() if seq.has_time else None)
        buys = rec.recommend_many([history], k=5, behaviour=target, exclude_seen=False)[0]
        new = rec.recommend_many([history], k=5, behaviour=target, exclude_seen=True)[0]  # discoveries only
        looks = rec.recommend_many([history], k=5, behaviour=ANY_BEHAVIOUR, exclude_seen=False)[0]
        action = rec.predict_next_action(history)
        intent = rec.purchase_intent(history)
        table = Table(title=f"user {v.users.tokens[seq.users[row]]} ({b - a} events)", show_lines=False)
        table.add_column("recent history (oldest first)")
        table.add_column(f"top-5 likely '{target}' (again = a repeat)")
        table.add_column(f"top-5 new to them, likely '{target}'")
        table.add_column("top-5 next item, any behaviour")
        recent = [f"{i} ({e})" for i, e in zip(items[-shown:], behs[-shown:], strict=True)]
        cols = [recent, _marked(buys), [f"{i}  {sc:.2f}" for i, sc in new.pairs()], _marked(looks)]
        for r in range(max(map(len, cols))):
            table.add_row(*(c[r] if r < len(c) else "" for c in cols))
        console.print(table)
        console.print(f"next action: {describe_actions(action, 2)}; "
                      f"P({target} {rec.cfg.task.intent_text}) = {intent:.2f}")


def _marked(recs: Recommendations) -> list[str]:
    """One "item  score" line per recommendation, repeats of the history marked "again"."""
    return [f"{i}  {sc:.2f}{'  again' if rep else ''}" for (i, sc), rep in zip(recs.pairs(), recs.repeat, strict=True)]
