"""Who may see and change what on the dashboard.

* Read key (``SHOPFORMER_READ_KEY``): when set, every page needs it. A browser cannot send a bearer
  header on navigation, so ``/ui/login`` exchanges the key for a cookie holding
  ``HMAC(read key, purpose)``: it reveals nothing about the key, survives a restart and stops
  working when the key changes. ``HttpOnly``, ``SameSite=Strict``, path ``/ui``. A bearer header
  with the read key works too (scripts, the benchmark).
* Admin key: promote / rollback need it typed into the confirmation form every time (never stored).
* CSRF: every state-changing form (login, promote, rollback) carries a token that must equal the
  ``sf_csrf`` cookie and be signed with this process's secret (double submit + signature); the
  cookies are ``SameSite=Strict`` as a second line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from fastapi import Request

from shopformer.serving.settings import ServeSettings

READ_COOKIE = "sf_read"
CSRF_COOKIE = "sf_csrf"
MAX_FORM_BYTES = 16 * 1024


class Forbidden(Exception):
    """A refused dashboard request (rendered as a page with this message, status 401/403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _sign(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


@dataclass
class Guard:
    settings: ServeSettings
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    # ---- read access ----------------------------------------------------------------------------
    @property
    def read_required(self) -> bool:
        return self.settings.scope_key("read") is not None

    def _read_token(self) -> str | None:
        key = self.settings.scope_key("read")
        return None if key is None else _sign(key.get_secret_value().encode(), "shopformer-dashboard-read")

    def can_read(self, request: Request) -> bool:
        expected = self._read_token()
        if expected is None:
            return True
        cookie = request.cookies.get(READ_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), expected.encode()):
            return True
        auth = request.headers.get("authorization", "")
        key = self.settings.scope_key("read")
        return bool(auth.startswith("Bearer ") and key is not None
                    and hmac.compare_digest(auth[7:].encode(), key.get_secret_value().encode()))

    def login(self, typed: str) -> str:
        """The cookie value for a correct read key; Forbidden otherwise."""
        key = self.settings.scope_key("read")
        token = self._read_token()
        if key is None or token is None:
            raise Forbidden(400, "this server has no read key: the dashboard is open")
        if not hmac.compare_digest(typed.encode(), key.get_secret_value().encode()):
            raise Forbidden(403, "wrong read key")
        return token

    # ---- admin ----------------------------------------------------------------------------------
    def check_admin(self, typed: str) -> None:
        key = self.settings.scope_key("admin")
        if key is None:
            raise Forbidden(403, "admin actions are disabled: the server has no admin key (set SHOPFORMER_ADMIN_KEY "
                            "or SHOPFORMER_API_KEY)")
        if not typed:
            raise Forbidden(401, "the admin key is required for this action")
        if not hmac.compare_digest(typed.encode(), key.get_secret_value().encode()):
            raise Forbidden(403, "invalid admin key")

    # ---- CSRF -----------------------------------------------------------------------------------
    def csrf_token(self, request: Request) -> str:
        """The request's CSRF token: the cookie's when it is validly signed, else a fresh one (the
        caller sets the cookie)."""
        current = request.cookies.get(CSRF_COOKIE, "")
        if self._csrf_valid(current):
            return current
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{_sign(self.secret, nonce)}"

    def _csrf_valid(self, token: str) -> bool:
        nonce, _, sig = token.partition(".")
        return bool(nonce and sig) and hmac.compare_digest(sig.encode(), _sign(self.secret, nonce).encode())

    def check_csrf(self, request: Request, form: dict[str, str]) -> None:
        sent, cookie = form.get("csrf", ""), request.cookies.get(CSRF_COOKIE, "")
        if not (sent and cookie and hmac.compare_digest(sent.encode(), cookie.encode()) and self._csrf_valid(sent)):
            raise Forbidden(403, "invalid or missing CSRF token: reload the page and try again")


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each field), bounded."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise Forbidden(415, "expected a form (application/x-www-form-urlencoded)")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Forbidden(413, f"form larger than {MAX_FORM_BYTES} bytes")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=32)
    return {k: v[0] for k, v in parsed.items()}
