"""Real-time serving: event ingestion, per-user state, micro-batched top-k, hot model reload.

``create_app(settings)`` builds the FastAPI app; ``serve_command`` runs it under uvicorn
(``shopformer serve RUN_DIR`` or ``python -m shopformer.serving RUN_DIR``). Importing this
package builds nothing: no model, no store, no settings are read until the app starts.
"""

from __future__ import annotations

from shopformer.serving.app import create_app
from shopformer.serving.cli import serve_command
from shopformer.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve_command"]
