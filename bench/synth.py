"""Scale the real Taobao UserBehavior head to N synthetic events with its distributions (benchmarks only).

    .venv/bin/python bench/synth.py --events 10000000 -o out/scale/taobao_10m.csv [--seed 0]

Fitted on ``../shared/data/taobao_userbehavior/UserBehavior_head.csv`` (84,287 real events of 814
users; see its PROVENANCE.md: research / non-commercial use, never redistribute the output either):

* **users' event counts** — drawn with replacement from the real per-user counts (so ~N / 103.5 users);
* **item popularity** — a Zipf law (exponent fitted on the real top-2,000 rank-frequency curve) over
  a catalogue that grows with N by Heaps' law ``items = a * events ** beta``, through the head's point
  (84,287 events, 55,233 items) and the full data set's published totals (100,150,807 events,
  4,162,024 items: Tianchi dataset page 649) — prefixes of an 814-user head alone would extrapolate
  to ten times too many items; item ids are a random permutation of ranks (ids carry no popularity);
* **repeats** — the real share of events whose item the user already had is kept (such an event
  re-uses a uniformly chosen earlier item of the same user);
* **behaviour mix** — the real pv / cart / fav / buy shares;
* **categories** — one per item, drawn from the real events' category shares;
* **time and session gaps** — each user starts at a real user's first timestamp and continues with
  gaps drawn from the real within-user gaps (seconds-long clicks and day-long returns alike).

Writes the headerless 5-column CSV of the original (``user,item,category,behaviour,timestamp``,
grouped by user) in chunks of ``--chunk`` events, so memory stays flat, and prints one JSON line with
the fitted parameters. Same ``--seed`` and ``--events``: the same bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from common import SHARED, provenance

REAL = SHARED / "taobao_userbehavior" / "UserBehavior_head.csv"
COLUMNS = ("user_id", "item_id", "category_id", "behaviour", "timestamp")
FULL_EVENTS, FULL_ITEMS = 100_150_807, 4_162_024  # the whole UserBehavior data set (Tianchi page)


@dataclass(frozen=True)
class Fit:
    """What the generator keeps from the real log."""

    user_counts: np.ndarray  # events per real user
    repeat_share: float
    behaviours: tuple[str, ...]
    behaviour_p: np.ndarray
    categories: np.ndarray  # real category ids
    category_p: np.ndarray
    zipf_s: float
    heaps_a: float
    heaps_beta: float
    starts: np.ndarray  # real users' first timestamps
    gaps: np.ndarray  # real within-user gaps (s)

    def summary(self) -> dict[str, object]:
        skip = {"user_counts", "behaviour_p", "categories", "category_p", "starts", "gaps"}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["behaviour_share"] = dict(zip(self.behaviours, np.round(self.behaviour_p, 4).tolist(), strict=True))
        out["events_per_user_mean"] = round(float(self.user_counts.mean()), 2)
        out["gap_median_s"] = float(np.median(self.gaps))
        return out


def fit(path: Path = REAL) -> Fit:
    strings = {c: pl.String for c in COLUMNS[:4]}
    real = pl.read_csv(path, has_header=False, new_columns=list(COLUMNS), schema_overrides=strings)
    real = real.sort("user_id", "timestamp", maintain_order=True)
    user_counts = real.group_by("user_id", maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    repeat = real.select(pl.col("item_id").is_first_distinct().over("user_id").not_().mean()).item()
    b = real["behaviour"].value_counts().sort("behaviour")
    c = real["category_id"].value_counts().sort("category_id")
    freq = np.sort(real["item_id"].value_counts()["count"].to_numpy())[::-1].astype(float)
    ranks = np.arange(1, min(len(freq), 2000) + 1)
    zipf_s = -float(np.polyfit(np.log(ranks), np.log(freq[: len(ranks)]), 1)[0])
    n_items = real["item_id"].n_unique()
    beta = np.log(FULL_ITEMS / n_items) / np.log(FULL_EVENTS / real.height)
    log_a = np.log(n_items) - beta * np.log(real.height)
    ts = real["timestamp"].to_numpy()
    first = real.group_by("user_id", maintain_order=True).agg(pl.col("timestamp").first())["timestamp"].to_numpy()
    same_user = real["user_id"].to_numpy()[1:] == real["user_id"].to_numpy()[:-1]
    return Fit(
        user_counts=user_counts,
        repeat_share=float(repeat),
        behaviours=tuple(b["behaviour"].to_list()),
        behaviour_p=b["count"].to_numpy() / real.height,
        categories=c["category_id"].to_numpy(),
        category_p=c["count"].to_numpy() / real.height,
        zipf_s=round(zipf_s, 4),
        heaps_a=round(float(np.exp(log_a)), 4),
        heaps_beta=round(float(beta), 4),
        starts=first,
        gaps=np.diff(ts)[same_user].astype(np.int64),
    )


class Generator:
    """Events for consecutive users, chunk by chunk."""

    def __init__(self, f: Fit, events: int, seed: int) -> None:
        self.f = f
        self.rng = np.random.default_rng(seed)
        self.n_items = max(10, int(f.heaps_a * events**f.heaps_beta))
        weights = 1.0 / np.arange(1, self.n_items + 1) ** f.zipf_s
        self.cdf = np.cumsum(weights / weights.sum())
        self.item_ids = self.rng.permutation(self.n_items) + 1
        self.item_category = self.rng.choice(f.categories, size=self.n_items, p=f.category_p)
        self.next_user = 1

    def users(self, remaining: int, budget: int) -> np.ndarray:
        """Event counts of the next users: about ``budget`` events, never past ``remaining``."""
        mean = float(self.f.user_counts.mean())
        counts = self.rng.choice(self.f.user_counts, size=max(1, int(budget / mean) + 1))
        total = np.cumsum(counts)
        counts = counts[: max(1, int(np.searchsorted(total, min(budget, remaining))) + 1)]
        excess = int(counts.sum()) - remaining
        if excess > 0:
            counts[-1] -= excess
        return counts[counts > 0]

    def chunk(self, counts: np.ndarray) -> pl.DataFrame:
        n = int(counts.sum())
        rng = self.rng
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        pos = np.arange(n) - starts
        rank = np.minimum(np.searchsorted(self.cdf, rng.random(n)), self.n_items - 1)
        # a repeat re-uses an earlier event's item; pointer jumping resolves chains of repeats
        repeat = (pos > 0) & (rng.random(n) < self.f.repeat_share)
        ptr = np.where(repeat, starts + (rng.random(n) * pos).astype(np.int64), np.arange(n))
        while True:
            nxt = ptr[ptr]
            if np.array_equal(nxt, ptr):
                break
            ptr = nxt
        rank = rank[ptr]
        gaps = rng.choice(self.f.gaps, size=n)
        gaps[pos == 0] = 0
        user_start = np.repeat(rng.choice(self.f.starts, size=len(counts)), counts)
        ts = user_start + _segment_cumsum(gaps, counts)
        users = np.repeat(np.arange(self.next_user, self.next_user + len(counts)), counts)
        self.next_user += len(counts)
        behaviour = np.asarray(self.f.behaviours)[rng.choice(len(self.f.behaviours), size=n, p=self.f.behaviour_p)]
        return pl.DataFrame({
            "user_id": users, "item_id": self.item_ids[rank], "category_id": self.item_category[rank],
            "behaviour": behaviour, "timestamp": ts,
        })


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment of ``counts``."""
    total = np.cumsum(values)
    seg_start = np.cumsum(counts) - counts
    offset = np.repeat(total[seg_start] - values[seg_start], counts)
    return total - offset


def generate(out: Path, events: int, seed: int = 0, chunk: int = 2_000_000, real: Path = REAL) -> dict[str, object]:
    t0 = time.perf_counter()
    f = fit(real)
    gen = Generator(f, events, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with tmp.open("wb") as fh:
        while written < events:
            frame = gen.chunk(gen.users(events - written, chunk))
            frame.write_csv(fh, include_header=False)
            written += frame.height
    tmp.replace(out)
    return {"out": str(out), "events": written, "users": gen.next_user - 1, "items_catalogue": gen.n_items,
            "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 1), "seed": seed,
            "fit": f.summary()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=2_000_000, help="events generated and written at a time")
    args = parser.parse_args(argv)
    print(json.dumps({**provenance(__file__, argv), **generate(args.out, args.events, args.seed, args.chunk)}))


if __name__ == "__main__":
    main()
