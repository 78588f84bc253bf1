"""The /ui pages: server-rendered Jinja2 (autoescaped) with htmx for partial updates.

A request with the ``HX-Request`` header gets only the page's panel (the search result, the health
numbers, the confirmation form); the same URL without it gets the whole page, so every link also
works without JavaScript and can be bookmarked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shopformer import __version__
from shopformer.serving.dashboard import charts, pages
from shopformer.serving.dashboard.health import HealthView
from shopformer.serving.dashboard.insights import Insights
from shopformer.serving.dashboard.overview import read_json, run_summary
from shopformer.serving.dashboard.security import CSRF_COOKIE, READ_COOKIE, Forbidden, Guard, read_form
from shopformer.serving.dashboard.versions import (
    REGISTRY_ERRORS,
    RegistryOpener,
    find_registry_root,
    switch,
    version_rows,
)
from shopformer.serving.settings import ServeSettings
from shopformer.serving.state import ServiceState

HERE = Path(__file__).parent
MAX_QUERY = 256
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, fmt=".4f": "-" if v is None or v != v else format(v, fmt)  # None, NaN: "-"
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
    return env


def start_clock(request: Request) -> None:
    """Every page answers with ``Server-Timing: app;dur=<ms>`` (bench/dashboard.py reads it)."""
    request.state.t0 = time.perf_counter()


def build_dashboard_router(settings: ServeSettings, registry_opener: RegistryOpener | None) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(start_clock)])
    env = environment()
    guard = Guard(settings)
    insights = Insights(settings.dashboard_insights)
    health = HealthView()
    summaries: dict[str, dict[str, Any]] = {}

    def svc_of(request: Request) -> ServiceState:
        return request.app.state.svc

    def registry() -> tuple[Any, str | None]:
        root = find_registry_root(settings.run_dir, settings.dashboard_registry)
        if root is None:
            return None, "the served run is not in a model registry (serve REGISTRY/current, or set " \
                         "SHOPFORMER_DASHBOARD_REGISTRY)"
        if registry_opener is None:
            return None, "this app was built without registry support (start it with `shopformer serve`)"
        try:
            return registry_opener(root), None
        except REGISTRY_ERRORS as err:
            return None, str(err)

    def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
        svc = svc_of(request)
        token = guard.csrf_token(request)
        base = {"request": request, "version": svc.engine.version, "package_version": __version__,
                "csrf": token, "read_required": guard.read_required, "nav": ctx.get("nav", ""),
                "partial": request.headers.get("hx-request") == "true"}
        html = env.get_template(name).render({**base, **ctx})
        resp = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        t0 = getattr(request.state, "t0", None)
        if t0 is not None:
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
        if request.cookies.get(CSRF_COOKIE) != token:
            resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/ui",
                            secure=request.url.scheme == "https")
        return resp

    def refused(request: Request, err: Forbidden) -> HTMLResponse:
        return render(request, "message.html", {"title": "Not allowed" if err.status in (401, 403) else "Error",
                                                "message": str(err)}, status=err.status)

    def gate(request: Request) -> Response | None:
        """None when the request may read; else the login redirect (pages) or a 401 (htmx panels)."""
        if guard.can_read(request):
            return None
        if request.headers.get("hx-request") == "true":
            return HTMLResponse("read key required: reload the page to log in", 401, headers=SECURITY_HEADERS)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)

    def clip(value: str | None) -> str:
        return (value or "").strip()[:MAX_QUERY]

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/ui") -> HTMLResponse:
        return render(request, "login.html", {"next": next if next.startswith("/ui") else "/ui", "nav": "login"})

    @router.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
            guard.check_csrf(request, form)
            cookie = guard.login(form.get("read_key", ""))
        except Forbidden as err:
            return refused(request, err)
        target = form.get("next", "/ui")
        resp = RedirectResponse(target if target.startswith("/ui") and "//" not in target else "/ui", 303)
        resp.set_cookie(READ_COOKIE, cookie, httponly=True, samesite="strict", path="/ui",
                        secure=request.url.scheme == "https")
        return resp

    @router.post("/logout", response_model=None)
    async def logout(request: Request) -> Response:
        try:
            guard.check_csrf(request, await read_form(request))
        except Forbidden as err:
            return refused(request, err)
        resp = RedirectResponse("/ui/login", 303)
        resp.delete_cookie(READ_COOKIE, path="/ui")
        return resp

    @router.get("", response_model=None)
    @router.get("/", response_model=None)
    async def overview(request: Request) -> Response:
        if (denied := gate(request)) is not None:
            return denied
        engine = svc_of(request).engine
        if engine.version not in summaries:
            summaries.clear()
            metrics = read_json(engine.run_dir / "metrics.json")
            summaries[engine.version] = run_summary(engine.run_dir, engine.rec.run.manifest, metrics,
                                                    engine.rec.cfg.model.name)
        summary = summaries[engine.version]
        curve = summary["curve"]
        chart = charts.line_chart(curve["series"], curve["epochs"], title="training curve") if curve else None
        reg, reg_note = registry()
        versions, versions_note = [], reg_note
        if reg is not None:
            try:
                versions = version_rows(reg)
            except REGISTRY_ERRORS as err:
                versions_note = str(err)
        return render(request, "overview.html", {
            "nav": "overview", "s": summary, "chart": chart, "model": engine.rec.cfg.model.name,
            "n_items": engine.rec.spec.n_items, "index": engine.index_kind, "versions": versions,
            "versions_note": versions_note, "heads": ", ".join(engine.rec.head_parts) or "next item"})

    @router.get("/versions/confirm", response_model=None)
    async def confirm(request: Request, action: str = "", version: str = "") -> Response:
        if (denied := gate(request)) is not None:
            return denied
        if action not in ("promote", "rollback"):
            return refused(request, Forbidden(400, "unknown action (promote or rollback)"))
        return render(request, "confirm.html", {"nav": "overview", "action": action, "target": clip(version)})

    @router.post("/versions/{action}", response_model=None)
    async def change_version(request: Request, action: str) -> Response:
        try:
            if not guard.can_read(request):
                raise Forbidden(401, "read key required: log in first")
            form = await read_form(request)
            guard.check_csrf(request, form)
            guard.check_admin(form.get("admin_key", ""))
            version = clip(form.get("version"))
            if action not in ("promote", "rollback"):
                raise Forbidden(400, "unknown action (promote or rollback)")
            if form.get("confirm") != version or not version:
                raise Forbidden(400, f"type the version name ({version or '?'}) to confirm the {action}")
            reg, note = registry()
            if reg is None:
                raise Forbidden(409, note or "no registry")
            try:
                await switch(svc_of(request), reg, action, version)
            except REGISTRY_ERRORS as err:
                raise Forbidden(409, f"{action} of {version} refused: {err}") from None
        except Forbidden as err:
            return refused(request, err)
        return render(request, "message.html", {"nav": "overview", "title": "Done", "ok": True,
                                                "message": f"{action}: {version} is now current and served "
                                                           f"(model {svc_of(request).engine.version})"})

    @router.get("/customers", response_model=None)
    async def customers(request: Request, user: str = "") -> Response:
        if (denied := gate(request)) is not None:
            return denied
        query = clip(user)
        data = await pages.customer(svc_of(request), query, insights) if query else None
        return render(request, "customers.html", {"nav": "customers", "query": query, "c": data})

    @router.get("/items", response_model=None)
    async def items(request: Request, item: str = "") -> Response:
        if (denied := gate(request)) is not None:
            return denied
        query = clip(item)
        data = pages.item(svc_of(request), query, insights) if query else None
        return render(request, "items.html", {"nav": "items", "query": query, "it": data,
                                              "stale": insights.stale_for(svc_of(request).engine.version)})

    @router.get("/trends", response_model=None)
    async def trends(request: Request) -> Response:
        if (denied := gate(request)) is not None:
            return denied
        data, _ = insights.load()
        return render(request, "trends.html", {"nav": "trends", "t": pages.trends(insights),
                                               "horizon_h": (data.get("horizon_seconds") or 0) / 3600,
                                               "stale": insights.stale_for(svc_of(request).engine.version)})

    @router.get("/health", response_model=None)
    async def health_page(request: Request) -> Response:
        if (denied := gate(request)) is not None:
            return denied
        svc = svc_of(request)
        return render(request, "health.html", {"nav": "health", "h": health.snapshot(svc.metrics.registry),
                                               "store": svc.store.kind})

    return router
