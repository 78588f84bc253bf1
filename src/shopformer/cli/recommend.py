"""``shopformer recommend``: top-k next items for a stored user or an ad-hoc history."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shopformer.cli.common import USER_ERRORS, console, fail, model_dir

if TYPE_CHECKING:
    from shopformer.recommender import History, Recommender


def recommend_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    user: Annotated[str | None, typer.Option(help="a user id from the training data set")] = None,
    history: Annotated[str | None, typer.Option(help="comma-separated raw item ids, oldest first")] = None,
    k: Annotated[int, typer.Option("-k", help="how many items")] = 10,
    exclude_seen: Annotated[bool | None, typer.Option(help="drop items already in the history")] = None,
    behaviour: Annotated[str | None, typer.Option(
        help="rank for the next event of this type, e.g. the purchase type ('*' = any); multi-task runs only")] = None,
    min_new_share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="at least this share of the k items are new to the user (0..1; "
        "--exclude-seen = 1.0); given alone, the run's default exclusion does not apply")] = None,
) -> None:
    """Print the top-k next items (raw ids with scores; 'repeat' = already in the history, 'new' = a
    discovery) for a user or an ad-hoc history.

    Multi-behaviour runs also print the next-action probabilities and the purchase intent."""
    from shopformer.artifacts import ArtifactError
    from shopformer.recommender import History, Recommender, describe_actions

    if (user is None) == (history is None):
        fail("give exactly one of --user or --history")
    try:
        rec = Recommender.load(model_dir(run))
        rec.behaviour_id(behaviour)  # an unknown name fails here (one line, exit 2), never falls back
        if user is not None:
            h = user_history(rec, user)
        else:
            h = History([s.strip() for s in (history or "").split(",") if s.strip()])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = rec.recommend_many([h], k=k, exclude_seen=exclude_seen, behaviour=behaviour,
                                     min_new_share=min_new_share)[0]
            parts = () if out.fallback else rec.head_parts
            action = rec.predict_next_action(h) if "action" in parts else None
            intent = rec.purchase_intent(h) if "intent" in parts else None
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(err)
    if out.fallback:
        console.print("[yellow]no known item in the history: popularity fallback[/yellow]")
    width = max((len(i) for i in out.items), default=0)
    for rank, (item, score, repeat) in enumerate(zip(out.items, out.scores, out.repeat, strict=True), 1):
        console.print(f"{rank:>3}  {item:<{width}}  {score:.4f}  {'repeat' if repeat else 'new'}", highlight=False)
    if action is not None:
        console.print(f"next action: {describe_actions(action)}")
    if intent is not None:
        console.print(f"purchase intent: P({rec.target_behaviour} within {rec.cfg.task.intent_horizon} events) = "
                      f"{intent:.3f}")


def user_history(rec: Recommender, user: str) -> History:
    """The stored history of one user from the data set the run was trained on."""
    import polars as pl

    from shopformer.data import schema as S
    from shopformer.recommender import History

    ds = rec.run.manifest.get("dataset_dir")
    if not ds or not (Path(ds) / "events.parquet").exists():
        raise ValueError("the run's data set is not available; use --history")
    ev = pl.read_parquet(Path(ds) / "events.parquet").filter(pl.col(S.USER) == user)
    if ev.is_empty():
        raise KeyError(f"unknown user {user!r} in {ds}")
    times = ev[S.TIME].to_list() if rec.spec.has_time and S.TIME in ev.columns else None
    return History(ev[S.ITEM].to_list(), ev[S.BEHAVIOUR].to_list() if S.BEHAVIOUR in ev.columns else None, times)
