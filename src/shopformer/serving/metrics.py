"""Prometheus metrics, one registry per app (several apps in one process never collide).

Requests are labelled by route *template* (``/v1/users/{user_id}/recommendations``), never by
raw path, so label cardinality stays bounded whatever ids clients send.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Fine buckets below 10 ms: the latency targets live there.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("shopformer_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("shopformer_http_request_duration_seconds", "Request latency (server side)",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("shopformer_model_info", "The model being served (value 1)",
                                ["version", "model", "index", "run_dir"], registry=r)
        self.model_items = Gauge("shopformer_model_items", "Catalogue size of the served model", registry=r)
        self.model_loaded = Gauge("shopformer_model_loaded_timestamp_seconds", "When the served model was loaded",
                                  registry=r)
        self.ann_recall = Gauge("shopformer_ann_recall_at_10", "Measured recall@10 of the item index vs exact",
                                registry=r)
        self.reloads = Counter("shopformer_model_reloads_total", "Reload attempts by result", ["result"], registry=r)
        self.events = Counter("shopformer_events_total", "Ingested events by outcome", ["outcome"], registry=r)
        self.fallbacks = Counter("shopformer_fallback_total", "Popularity answers by reason", ["reason"], registry=r)
        self.batch_size = Histogram("shopformer_inference_batch_size", "Requests per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.shed = Counter("shopformer_shed_requests_total", "Requests answered 503 at once because this worker "
                            "had max_in_flight requests in flight (load shedding)", registry=r)
        # Online hit rate and drift (serving/online.py).
        self.served_lists = Counter("shopformer_served_lists_total", "Recommendation lists logged for the online "
                                    "hit rate", registry=r)
        self.online_next = Counter("shopformer_online_next_events_total", "Users' next events after a served list: "
                                   "hit / miss (within the window); expired: lists older than the window",
                                   ["outcome"], registry=r)
        self.online_hit_rate = Gauge("shopformer_online_hit_rate", "Next events on a recommended item / next events "
                                     "after a served list, since start (NaN: none yet)", registry=r)
        self.drift = Gauge("shopformer_drift", "Events ingested since the model was loaded vs its training data: "
                           "events, unknown_item_share, behaviour_psi, behaviour_js (NaN: undefined); score_psi: "
                           "top-1 scores of recent lists vs the first ones after loading",
                           ["indicator"], registry=r)

    def set_model(self, version: str, model: str, index: str, run_dir: str, n_items: int, loaded_at: float,
                  recall: float | None) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, model=model, index=index, run_dir=run_dir).set(1)
        self.model_items.set(n_items)
        self.model_loaded.set(loaded_at)
        if recall is not None:
            self.ann_recall.set(recall)

    def render(self) -> bytes:
        return generate_latest(self.registry)
