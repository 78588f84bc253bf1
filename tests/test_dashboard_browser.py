"""The dashboard in a real browser: Playwright driving Debian's chromium (``/usr/bin/chromium``,
installed by scripts/ensure_chromium.sh; never a browser download) against a real
``shopformer serve REGISTRY/current --dashboard`` process on localhost.

Checks: every page renders without console errors (the Content-Security-Policy included), login
with the read key, search finds a user, a recommendation shows its explanation, promote / rollback
work with the admin key and are refused without it, an XSS attempt in an item id renders inert, and
the layout fits a phone. Screenshots of each page go to out/test_artifacts/dashboard/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from dashboard_support import ADMIN_KEY, READ_KEY, XSS, World, fresh_registry, world
from serving_support import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "out" / "test_artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INGEST = "ingest-secret"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed and scripts/ensure_chromium.sh could not install it (no root, no "
                "apt-get): the dashboard browser tests need Debian's chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, World, Path]]:
    w = world()
    tmp = tmp_path_factory.mktemp("dashboard_browser")
    reg = fresh_registry(tmp / "registry")
    env = {"SHOPFORMER_READ_KEY": READ_KEY, "SHOPFORMER_ADMIN_KEY": ADMIN_KEY, "SHOPFORMER_INGEST_KEY": INGEST}
    srv = ServerProcess(reg / "current", f"sqlite:///{tmp}/state.db", api_key=None, log_path=tmp / "server.log",
                        extra_args=("--dashboard", "--dashboard-insights", str(w.insights)), env=env).start()
    events = [{"user_id": "shopper-7", "item_id": w.items[i], "behaviour": b, "timestamp": 1_600_700_000 + 60 * i}
              for i, b in enumerate(["pv", "pv", "cart", "pv", "fav", "pv", "buy", "pv"])]
    r = httpx.post(f"{srv.url}/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {INGEST}"})
    assert r.status_code == 200, r.text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield srv, w, reg
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A logged-in page that records console errors, uncaught exceptions and dialogs."""

    def __init__(self, browser: Any, url: str, viewport: dict[str, int] | None = None) -> None:
        self.ctx = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.page = self.ctx.new_page()
        self.url, self.errors, self.dialogs = url, [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def login(self) -> Watched:
        self.page.goto(f"{self.url}/ui")
        assert "/ui/login" in self.page.url  # the read key is configured: pages need it
        self.page.fill("input[name=read_key]", READ_KEY)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{self.url}/ui")
        return self

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.ctx.close()


def test_every_page_renders_without_console_errors(server: tuple, browser: Any) -> None:
    srv, w, _ = server
    p = Watched(browser, srv.url).login()
    try:
        p.shot("overview")
        assert p.page.text_content("#model-version") == w.versions[0]
        for path, name, selector in [("/ui/customers?user=shopper-7", "customers", "#recommendations"),
                                     (f"/ui/items?item={w.items[0]}", "items", "#forecast svg"),
                                     ("/ui/trends", "trends", "#trends-item svg"),
                                     ("/ui/health", "health", "#latency")]:
            p.page.goto(srv.url + path)
            p.page.wait_for_selector(selector)
            p.shot(name)
        p.page.wait_for_timeout(5500)  # one htmx poll of the health panel
        assert p.page.is_visible("#events-per-min")
        assert p.errors == [], p.errors
    finally:
        p.close()


def test_search_finds_a_user_and_explains_a_recommendation(server: tuple, browser: Any) -> None:
    srv, _, _ = server
    p = Watched(browser, srv.url).login()
    try:
        p.page.goto(f"{srv.url}/ui/customers")
        p.page.fill("#user", "shopper-7")
        p.page.click("form.search button")
        p.page.wait_for_selector("#customer-result")
        assert "user=shopper-7" in p.page.url  # htmx pushed the search into the address bar
        assert "8 stored" in p.page.text_content("#customer-result")
        first = p.page.locator("li.rec .because").first
        assert first.text_content().startswith("because you ")
        assert p.errors == [], p.errors
    finally:
        p.close()


def test_promote_and_rollback_need_the_admin_key(server: tuple, browser: Any) -> None:
    srv, w, reg = server
    p = Watched(browser, srv.url).login()

    def act(label: str, version: str, key: str) -> str:
        p.page.goto(f"{srv.url}/ui")
        p.page.click(f"tr[data-version={version}] a:has-text('{label}')")
        p.page.wait_for_selector("#confirm form")  # the confirmation step, loaded by htmx
        p.page.fill("#confirm input[name=admin_key]", key)
        p.page.fill("#confirm input[name=confirm]", version)
        p.page.click("#confirm button[type=submit]")
        p.page.wait_for_selector("p.message")
        return p.page.text_content("p.message") or ""

    try:
        assert "invalid admin key" in act("Promote", "v0002", "not-the-key")
        assert (reg / "current").resolve().parent.name == "v0001"
        assert "v0002 is now current" in act("Promote", "v0002", ADMIN_KEY)
        p.shot("promoted")
        p.page.goto(f"{srv.url}/ui")
        assert p.page.text_content("#model-version") == w.versions[1]
        assert (reg / "current").resolve().parent.name == "v0002"
        assert "v0001 is now current" in act("Roll back", "v0001", ADMIN_KEY)
        p.page.goto(f"{srv.url}/ui")
        assert p.page.text_content("#model-version") == w.versions[0]
        assert httpx.get(f"{srv.url}/healthz").json()["model_version"] == w.versions[0]
        assert p.errors == [e for e in p.errors if "403" in e], p.errors  # only the refused POST
    finally:
        p.close()


def test_xss_in_an_item_id_renders_inert(server: tuple, browser: Any) -> None:
    srv, _, _ = server
    p = Watched(browser, srv.url).login()
    try:
        p.page.goto(f"{srv.url}/ui/items")
        p.page.fill("#item", XSS)
        p.page.click("form.search button")
        p.page.wait_for_selector("#unknown-item")
        assert p.page.text_content("#unknown-item") == XSS  # shown as text
        assert p.page.evaluate("window.__xss") is None  # never executed
        assert p.page.locator("main img").count() == 0 and p.dialogs == []
        p.page.goto(f"{srv.url}/ui/customers?user={quote(XSS)}")
        assert p.page.evaluate("window.__xss") is None
        assert p.errors == [], p.errors
    finally:
        p.close()


def test_pages_fit_a_phone(server: tuple, browser: Any) -> None:
    srv, _, _ = server
    p = Watched(browser, srv.url, viewport={"width": 390, "height": 844}).login()
    try:
        for name, path in (("overview", "/ui"), ("customers", "/ui/customers?user=shopper-7"),
                           ("health", "/ui/health")):
            p.page.goto(srv.url + path)
            overflow = p.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, overflow)
            p.shot(f"phone_{name}")
    finally:
        p.close()
