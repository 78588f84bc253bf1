"""The data of the Customer, Item and Trends pages (the Overview's is in overview.py, Health's in
health.py). Everything model-related goes through the engine / recommender, like the v1 API."""

from __future__ import annotations

import logging
from typing import Any

from shopformer.recommender import History, Reason, RecRequest, describe_reasons
from shopformer.serving.dashboard import charts
from shopformer.serving.dashboard.insights import Insights
from shopformer.serving.dashboard.overview import utc
from shopformer.serving.routes import explain_items, recommend
from shopformer.serving.state import ServiceState

log = logging.getLogger(__name__)
RECENT_EVENTS = 20
RECS = 10
SEARCH_MATCHES = 20
BADGES = (  # (name fragments, symbol, css class)
    (("remove",), "✕", "remove"), (("buy", "purchase", "order", "transaction", "checkout"), "✓", "buy"),
    (("cart", "basket"), "▣", "cart"), (("fav", "wish", "like", "save"), "♥", "fav"),
    (("pv", "view", "click", "visit", "page"), "◉", "view"),
)


def badge(behaviour: str | None) -> dict[str, str]:
    name = behaviour or "event"
    low = name.lower()
    for fragments, symbol, css in BADGES:
        if any(f in low for f in fragments):
            return {"name": name, "symbol": symbol, "css": css}
    return {"name": name, "symbol": "•", "css": "other"}


def search_users(svc: ServiceState, query: str) -> list[str]:
    """Users of the served model's training data whose id contains ``query`` (first matches)."""
    out = []
    for token in svc.engine.rec.vocabs.users.tokens[1:]:
        if query in token:
            out.append(token)
            if len(out) == SEARCH_MATCHES:
                break
    return out


async def customer(svc: ServiceState, user: str, insights: Insights) -> dict[str, Any]:
    key = svc.user_key(user)  # the pseudonym the store keeps, when the service pseudonymises ids
    stored = await svc.store.history(key, svc.engine.max_len)
    if not stored:
        pseudonyms = svc.pseudonym_key is not None  # the training ids are pseudonyms: nothing to match
        return {"user": user, "found": False, "matches": search_users(svc, user) if user and not pseudonyms else []}
    hist = History([e.item_id for e in stored], [e.behaviour for e in stored],  # type: ignore[misc]
                   [e.timestamp for e in stored])
    engine, rec = await recommend(svc, RecRequest(hist, RECS, None, None, 0.5))
    out: dict[str, Any] = {
        "user": user, "found": True, "n_events": len(stored), "fallback": rec.fallback, "skipped": rec.skipped,
        "events": [{"item": e.item_id, "badge": badge(e.behaviour), "time": utc(e.timestamp, "%Y-%m-%d %H:%M:%S")}
                   for e in reversed(stored[-RECENT_EVENTS:])],
    }
    reasons: list[list[Reason]] | None = None
    if rec.items and not rec.fallback:
        # the events the page lists are the ones a reason may name (and a shorter occlusion pass)
        recent = min(svc.settings.explain_recent or RECENT_EVENTS, RECENT_EVENTS)
        try:
            reasons = await explain_items(engine, hist, rec, None, recent)
        except ValueError as err:
            log.warning("no explanation for a dashboard customer: %s", err)
    rows = [{"item": i, "score": s, "repeat": r,
             "because": describe_reasons(reasons[j]) if reasons else "",
             "weights": [{"item": x.item, "weight": x.weight} for x in reasons[j]] if reasons else []}
            for j, (i, s, r) in enumerate(zip(rec.items, rec.scores, rec.repeat, strict=True))]
    out["repeats"] = [r for r in rows if r["repeat"]]
    out["discoveries"] = [r for r in rows if not r["repeat"]]
    out["explained"] = reasons is not None
    parts = engine.rec.head_parts
    try:
        if "action" in parts:
            probs = engine.rec.predict_next_action(hist)
            out["next_action"] = [{"badge": badge(b), "p": p, "bar": charts.bar(p, label=b)}
                                  for b, p in sorted(probs.items(), key=lambda kv: -kv[1])]
        if "intent" in parts:
            intent = engine.rec.purchase_intent(hist)
            out["intent"] = {"p": intent, "bar": charts.bar(intent, label="intent"), "of": engine.rec.target_behaviour}
    except ValueError as err:  # no known item in the history: the heads have nothing to read
        out["heads_note"] = str(err)
    churn, why = insights.part("churn")
    if churn:
        scores = churn.get("scores") or {}
        p = scores.get(key, scores.get(user))  # data prepared with --pseudonymise-users holds pseudonyms
        out["churn"] = {"p": p, "days": churn.get("days"), "bar": charts.bar(p or 0.0, label="churn")} \
            if p is not None else {"note": "this user is not in the data the churn scores were computed on"}
    else:
        out["churn"] = {"note": why}
    return out


def item(svc: ServiceState, item_id: str, insights: Insights) -> dict[str, Any]:
    engine = svc.engine
    if not engine.knows_item(item_id):
        return {"item": item_id, "found": False}
    rec = engine.rec
    idx = rec.vocabs.items.index[item_id]
    counts = rec.run.item_counts
    count = float(counts[idx])
    cat = int(rec.run.item_category[idx]) if len(rec.run.item_category) > idx else 0
    similar = engine.similar(item_id, RECS)
    out: dict[str, Any] = {
        "item": item_id, "found": True, "count": count, "rank": int((counts > count).sum()) + 1,
        "n_items": rec.spec.n_items, "category": rec.vocabs.categories.tokens[cat] if cat > 0 else None,
        "similar": [{"item": i, "score": s} for i, s in zip(similar.items, similar.scores, strict=True)],
    }
    fc, why = insights.part("forecast")
    row = (fc.get("items") or {}).get(item_id) if fc else None
    if row:
        labels = insights.period_labels()
        out["forecast"] = {
            "chart": charts.forecast_chart(row["history"], [tuple(f) for f in row["forecasts"]], labels,
                                           title=f"{fc.get('behaviour')} per period"),
            "behaviour": fc.get("behaviour"), "interval": fc.get("interval"),
            "rows": [{"period": labels[f[0]] if f[0] < len(labels) else "?",
                      "actual": row["history"][f[0]] if f[0] < len(row["history"]) else None,
                      "mean": f[1], "lo": f[2], "hi": f[3]} for f in row["forecasts"]],
            "wape": fc.get("wape"), "coverage": fc.get("coverage"),
        }
    else:
        out["forecast_note"] = why or "no forecast for this item (no recent activity)"
    return out


def trends(insights: Insights) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": []}
    for level in ("item", "category"):
        part, why = insights.part(f"trends_{level}")
        if not part:
            if level == "item" or (why and "has no" not in why):
                out["levels"].append({"level": level, "note": why})
            continue
        block: dict[str, Any] = {"level": level, "summary": part.get("summary", {})}
        for side in ("risers", "fallers"):
            block[side] = [{**r, "spark": charts.sparkline(r["history"], label=f"{r['series']} per period")}
                           for r in part.get(side, [])]
        out["levels"].append(block)
    return out
