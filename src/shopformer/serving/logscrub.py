"""Keep user ids out of the access log.

The service's own log lines name route templates (``/v1/users/{user_id}``), never raw paths. The
access log (uvicorn's ``uvicorn.access`` logger, off by default: ``SHOPFORMER_ACCESS_LOG``) logs
the request path, which holds the user id in ``/v1/users/<id>...``: this filter replaces that path
segment with ``{user_id}`` before any handler sees the record, so neither a raw id nor a pseudonym
reaches a log file (and a deleted user leaves nothing there to delete).
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
_USER_PATH = re.compile(r"^(/v1/users/)[^/?#]+")


def scrub_path(path: str) -> str:
    """``/v1/users/alice/recommendations?k=5`` -> ``/v1/users/{user_id}/recommendations?k=5``."""
    return _USER_PATH.sub(r"\1{user_id}", path)


class UserIdFilter(logging.Filter):
    """Rewrites the path argument of uvicorn's access records (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], scrub_path(args[2]), *args[3:])
        return True


def install_access_log_filter() -> None:
    """Add the filter to the access logger once (idempotent: app factories may run many times)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, UserIdFilter) for f in logger.filters):
        logger.addFilter(UserIdFilter())
