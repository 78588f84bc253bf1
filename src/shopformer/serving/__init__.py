"""Real-time serving: event ingestion, per-user state, micro-batched top-k, hot model reload.

``create_app(settings)`` builds the FastAPI app; ``shopformer serve RUN_DIR`` (cli/serve.py) runs
it under uvicorn. The service reaches models only through ``shopformer.recommender``. Importing this
package builds nothing: no model, no store, no settings are read until the app starts.

Endpoints (OpenAPI at ``/docs``; every answer names the model version in its body and in the
``x-model-version`` header; ``[ingest]`` / ``[admin]`` need ``Authorization: Bearer <key of that
scope>``, reads need the read key only when one is set; see auth.py and docs/serving-reliability.md):

- ``POST /v1/events`` [ingest] - store a batch of events (validated whole, durable before the 200;
  ``event_id`` makes retries idempotent; unknown item ids are stored and reported, not scored)
- ``GET /v1/users/{user_id}/recommendations?k=&exclude_seen=&behaviour=&min_new_share=`` - top-k from
  the stored history, each item flagged ``repeat`` (in the history) or not (a discovery); unknown
  users get the popularity ranking with ``fallback: true``
- ``POST /v1/recommendations`` - top-k for a history in the body (nothing stored)
- ``GET /v1/items/{item_id}/similar?k=`` - nearest items by the model's item embeddings
- ``DELETE /v1/users/{user_id}`` [admin] - forget a user (store rows, idempotency records, store
  files scrubbed; recorded in the hashed deletion ledger)
- ``POST /v1/admin/reload`` [admin] - load a run directory under the reload root fully, then swap;
  on error the old model stays
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus)

Layout: settings.py (env/CLI), app.py (factory + lifespan + error mapping + published limits),
routes.py, schemas.py + timestamps.py (bounded integer / ISO-8601 timestamps), auth.py (scoped
keys), reload.py (reload root), engine.py (model + index + micro-batcher), batching.py, ann.py
(exact / FAISS), store.py (the contract) with stored.py, store_sqlite.py and store_redis.py,
state.py, metrics.py + middleware.py (Prometheus, body limit, Connection: close on 5xx).
The server fixtures of the tests, ``bench/serve_load.py`` and ``bench/serving_chaos.py`` live in
``tests/serving_support.py``.
"""

from __future__ import annotations

from shopformer.serving.app import create_app
from shopformer.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
