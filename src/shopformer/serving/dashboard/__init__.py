"""The web dashboard under ``/ui`` (``shopformer serve RUN --dashboard``): Overview, Customers,
Items, Trends and Health pages for the people who run the shop. Server-rendered Jinja2 templates,
htmx (vendored in static/, 0BSD) for partial updates and inline SVG charts drawn on the server:
every asset ships inside the package, nothing is fetched from a CDN. See docs/dashboard.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from shopformer.serving.dashboard.routes import HERE, build_dashboard_router
from shopformer.serving.dashboard.versions import RegistryOpener, VersionRegistry
from shopformer.serving.settings import ServeSettings

__all__ = ["RegistryOpener", "VersionRegistry", "install_dashboard"]


def install_dashboard(app: FastAPI, settings: ServeSettings, registry_opener: RegistryOpener | None = None) -> None:
    """Add the /ui pages and their static files (htmx, CSS) to ``app``."""
    app.include_router(build_dashboard_router(settings, registry_opener))
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
