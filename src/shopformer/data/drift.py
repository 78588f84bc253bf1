"""Data drift between a model's training window and new events: unknown items and behaviour mix.

    drift_report(train_events, new_events, vocabs)
    -> {"events": 1200, "unknown_item_share": 0.08, "unknown_user_share": 0.3,
        "behaviour_psi": 0.02, "behaviour_js": 0.004, "new_behaviours": [], ...}

* ``unknown_item_share`` — share of the new events on items the model's vocabulary lacks (the model
  cannot recommend those items until a retrain grows its tables);
* ``behaviour_psi`` — population stability index of the behaviour mix, sum (q - p) ln(q / p) over
  behaviour types (shares smoothed by ``EPS``); rule of thumb: < 0.1 stable, 0.1-0.25 moderate,
  > 0.25 a real shift;
* ``behaviour_js`` — Jensen-Shannon divergence of the two mixes, base 2 (0 = same, 1 = disjoint).

Scores (continuous) are compared the same way after ``score_bins``: the shares of two samples in the
deciles of the reference sample (the service's live ``score_psi``, a version's ``score_psi`` /
``score_js`` of its top-1 scores against its parent's).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from shopformer.data import schema as S
from shopformer.data.vocab import Vocabs

EPS = 1e-4  # floor of a behaviour share in PSI (a type absent on one side would be infinite)


def behaviour_mix(events: pl.DataFrame, names: list[str]) -> np.ndarray:
    """Shares of each behaviour name (in ``names`` order) among ``events``."""
    if events.height == 0:
        return np.zeros(len(names))
    counts = dict(events.group_by(S.BEHAVIOUR).len().iter_rows())
    n = np.array([counts.get(b, 0) for b in names], dtype=np.float64)
    return n / max(n.sum(), 1.0)


def psi(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> float:
    """Population stability index of distribution ``q`` against ``p`` (symmetric in effect)."""
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    p, q = p / p.sum(), q / q.sum()
    return float(((q - p) * np.log(q / p)).sum())


def score_bins(ref: np.ndarray, new: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Shares of ``ref`` and of ``new`` in the ``bins`` quantile bins of ``ref`` (for ``psi`` /
    ``jensen_shannon`` of a continuous score); both samples non-empty."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref), minlength=len(edges) + 1) / len(ref)
    q = np.bincount(np.searchsorted(edges, new), minlength=len(edges) + 1) / len(new)
    return p, q


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2, in [0, 1]."""
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def drift_report(train_events: pl.DataFrame | None, new_events: pl.DataFrame, vocabs: Vocabs) -> dict:
    """Drift of ``new_events`` (raw canonical columns) against the training window ``train_events``
    (None: only the unknown shares) and the model's ``vocabs``."""
    n = new_events.height
    known_items, known_users = list(vocabs.items.tokens[1:]), list(vocabs.users.tokens[1:])
    unknown_items = new_events.filter(~pl.col(S.ITEM).is_in(known_items))
    out: dict = {
        "events": n,
        "unknown_item_share": unknown_items.height / n if n else 0.0,
        "unknown_items": unknown_items[S.ITEM].n_unique(),
        "unknown_user_share": new_events.filter(~pl.col(S.USER).is_in(known_users)).height / n if n else 0.0,
    }
    known_b = set(vocabs.behaviours.tokens[1:])
    new_b = sorted(set(new_events[S.BEHAVIOUR].drop_nulls().unique().to_list()) - known_b)
    out["new_behaviours"] = new_b
    if train_events is not None and train_events.height and n:
        names = sorted(known_b | set(new_b))
        p, q = behaviour_mix(train_events, names), behaviour_mix(new_events, names)
        out["behaviour_mix_train"] = dict(zip(names, p.round(6).tolist(), strict=True))
        out["behaviour_mix_new"] = dict(zip(names, q.round(6).tolist(), strict=True))
        out["behaviour_psi"] = psi(p, q)
        out["behaviour_js"] = jensen_shannon(p, q)
        if S.TIME in train_events.columns and train_events[S.TIME].null_count() < train_events.height:
            out["days_since_training_data"] = _days(train_events, new_events)
    return out


def _days(train: pl.DataFrame, new: pl.DataFrame) -> float | None:
    t_train, t_new = train[S.TIME].cast(pl.Int64).max(), new[S.TIME].cast(pl.Int64).max()
    if not isinstance(t_train, int) or not isinstance(t_new, int):
        return None
    return round((t_new - t_train) / 86_400, 3)

