"""Scoped bearer keys: ``ingest`` (event writes), ``admin`` (deletion, reload), ``read`` (optional).

Each endpoint accepts only the key of its scope (compared in constant time). A scope without a
configured key answers 403 for ingest and admin (no anonymous writes by accident) and is open
for reads.

No ``from __future__ import annotations``: FastAPI must evaluate the dependency's annotation,
which names the local ``bearer`` scheme.
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shopformer.serving.settings import ServeSettings

SCOPE_ENV = {"ingest": "SHOPFORMER_INGEST_KEY", "admin": "SHOPFORMER_ADMIN_KEY", "read": "SHOPFORMER_READ_KEY"}


def scope_guard(settings: ServeSettings, scope: str) -> Callable[..., Awaitable[None]] | None:
    """A FastAPI dependency that requires the ``scope`` key; None when the scope is open (reads only)."""
    key = settings.scope_key(scope)
    if key is None and scope == "read":
        return None
    expected = key.get_secret_value().encode() if key is not None else None
    bearer = HTTPBearer(auto_error=False, scheme_name=f"{scope}Key", description=f"the {scope} key ({SCOPE_ENV[scope]}"
                        + (" or SHOPFORMER_API_KEY)" if scope != "read" else ")"))

    async def require_key(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if creds is None:
            raise HTTPException(401, f"missing bearer token (Authorization: Bearer <{scope} key>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if expected is None:
            raise HTTPException(403, f"{scope} is disabled: the server has no {scope} key (set {SCOPE_ENV[scope]} "
                                "or SHOPFORMER_API_KEY)")
        if not hmac.compare_digest(creds.credentials.encode(), expected):
            raise HTTPException(403, f"invalid {scope} key")

    return require_key


def dependencies(settings: ServeSettings, scope: str) -> list[Any]:
    """``dependencies=`` of a route of this scope."""
    guard = scope_guard(settings, scope)
    return [] if guard is None else [Depends(guard)]
