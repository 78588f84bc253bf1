"""The Health page's numbers, read from the service's own Prometheus registry (``serving/metrics.py``):
events per minute (over the last minute of page polls, and since start), latency percentiles per
route from the histogram buckets, error counts, and any drift / online-quality gauge other parts of
the service publish (names containing ``drift``, ``hit_rate`` or ``online``), shown as they are.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

WINDOW_S = 60.0
EXTRA_MARKERS = ("drift", "hit_rate", "online", "psi")
HIT_RATE = "shopformer_online_hit_rate"  # serving/online.py: next events on a recommended item, since start
NEXT_EVENTS = "shopformer_online_next_events_total"  # its counts by outcome (hit, miss, expired)


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` from cumulative histogram buckets (upper bound, count), interpolated linearly
    inside the bucket (the Prometheus ``histogram_quantile`` rule); None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            inside = count - prev_count
            frac = (rank - prev_count) / inside if inside > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound


def hit_rate(extras: list[dict[str, Any]]) -> float | None:
    """The online hit rate; None before any next event was judged (a gauge reads 0 until then)."""
    judged = {x["labels"]: x["value"] for x in extras if x["name"] == NEXT_EVENTS}
    if judged and judged.get("outcome=hit", 0.0) + judged.get("outcome=miss", 0.0) == 0:
        return None
    return next((x["value"] for x in extras if x["name"] == HIT_RATE and math.isfinite(x["value"])), None)


@dataclass
class HealthView:
    started: float = field(default_factory=time.time)
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))

    def snapshot(self, registry: CollectorRegistry) -> dict[str, Any]:
        requests: dict[tuple[str, str], dict[str, float]] = {}
        hist: dict[tuple[str, str], list[tuple[float, float]]] = {}
        counts: dict[tuple[str, str], float] = {}
        events: dict[str, float] = {}
        extras: list[dict[str, Any]] = []
        for fam in registry.collect():
            for s in fam.samples:
                if s.name == "shopformer_http_requests_total":
                    key = (s.labels.get("method", ""), s.labels.get("route", ""))
                    requests.setdefault(key, {})[s.labels.get("status", "")] = s.value
                elif s.name == "shopformer_http_request_duration_seconds_bucket":
                    key = (s.labels.get("method", ""), s.labels.get("route", ""))
                    hist.setdefault(key, []).append((float(s.labels["le"]), s.value))
                elif s.name == "shopformer_http_request_duration_seconds_count":
                    counts[(s.labels.get("method", ""), s.labels.get("route", ""))] = s.value
                elif s.name == "shopformer_events_total":
                    events[s.labels.get("outcome", "")] = s.value
                elif any(m in s.name for m in EXTRA_MARKERS) and not s.name.endswith("_created"):
                    extras.append({"name": s.name, "labels": ", ".join(f"{k}={v}" for k, v in s.labels.items()),
                                   "value": s.value, "help": fam.documentation})
        now = time.time()
        applied = events.get("applied", 0.0)
        self.samples.append((now, applied))
        while len(self.samples) > 2 and now - self.samples[0][0] > WINDOW_S:
            self.samples.popleft()
        t0, e0 = self.samples[0]
        recent = (applied - e0) / (now - t0) * 60 if now - t0 >= 1 else None
        routes = []
        for key in sorted(set(requests) | set(hist), key=lambda k: (k[1], k[0])):
            b = sorted(hist.get(key, []))
            by_status = requests.get(key, {})
            total = sum(by_status.values())
            server_err = sum(v for st, v in by_status.items() if st.startswith("5"))
            client_err = sum(v for st, v in by_status.items() if st.startswith("4"))
            routes.append({"method": key[0], "route": key[1], "count": int(counts.get(key, total)),
                           "p50": quantile(b, 0.5), "p95": quantile(b, 0.95), "p99": quantile(b, 0.99),
                           "errors_5xx": int(server_err), "errors_4xx": int(client_err)})
        uptime = max(now - self.started, 1e-9)
        return {
            "uptime_s": uptime, "events": {k: int(v) for k, v in sorted(events.items())},
            "events_per_min_recent": recent, "events_per_min_since_start": applied / uptime * 60,
            "routes": routes, "errors_5xx": sum(r["errors_5xx"] for r in routes),
            "errors_4xx": sum(r["errors_4xx"] for r in routes), "extras": extras,
            "hit_rate": hit_rate(extras),
        }
