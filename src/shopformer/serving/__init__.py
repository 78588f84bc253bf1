"""Real-time serving: event ingestion, per-user state, micro-batched top-k, hot model reload.

``create_app(settings)`` builds the FastAPI app; ``shopformer serve RUN_DIR`` (cli/serve.py) runs
it under uvicorn. The service reaches models only through ``shopformer.recommender``. Importing this
package builds nothing: no model, no store, no settings are read until the app starts.

Endpoints (OpenAPI at ``/docs``; every answer names the model version in its body and in the
``x-model-version`` header; ``[key]`` needs ``Authorization: Bearer $SHOPFORMER_API_KEY``):

- ``POST /v1/events`` [key] - store a batch of events (durable before the 200; ``event_id`` makes
  retries idempotent; unknown item ids are stored and reported, not scored)
- ``GET /v1/users/{user_id}/recommendations?k=&exclude_seen=&behaviour=&min_new_share=`` - top-k from
  the stored history, each item flagged ``repeat`` (in the history) or not (a discovery); unknown
  users get the popularity ranking with ``fallback: true``
- ``POST /v1/recommendations`` - top-k for a history in the body (nothing stored)
- ``GET /v1/items/{item_id}/similar?k=`` - nearest items by the model's item embeddings
- ``DELETE /v1/users/{user_id}`` [key] - forget a user
- ``POST /v1/admin/reload`` [key] - load a run directory fully, then swap; on error the old model stays
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus)

Layout: settings.py (env/CLI), app.py (factory + lifespan), routes.py, schemas.py, engine.py
(model + index + micro-batcher), batching.py, ann.py (exact / FAISS), store.py (SQLite / Redis),
metrics.py + middleware.py (Prometheus, body limit). The server fixtures of the tests and
``bench/serve_load.py`` live in ``tests/serving_support.py``.
"""

from __future__ import annotations

from shopformer.serving.app import create_app
from shopformer.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
