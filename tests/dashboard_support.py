"""One small world for the dashboard tests (tests/test_dashboard_*.py), built once per process:
a shop log with categories and real timestamps, two tiny multi-task runs in a model registry
(v0001 current, v0002 a candidate) and the insights file of the current one.

The runs are built, not trained (random weights, heads moved off zero, as in the application
tests): the dashboard tests check pages, security and data flow, which must hold for any weights."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from applications_support import COLUMNS, tiny_run, write_activity_log

from shopformer.artifacts import load_run
from shopformer.data.corpus import load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.continuous import add_run
from shopformer.pipelines.insights import compute_insights, write_insights

READ_KEY, ADMIN_KEY = "read-secret", "admin-secret"
XSS = '<img src=x onerror="window.__xss=1">"><script>window.__xss=2</script>'


@dataclass(frozen=True)
class World:
    root: Path
    registry: Path
    insights: Path
    items: list[str]  # raw item ids of the catalogue
    users: list[str]  # raw user ids of the data set
    versions: tuple[str, str]  # model version ids of v0001 and v0002


_WORLD: list[World] = []


def world() -> World:
    if _WORLD:
        return _WORLD[0]
    root = Path(tempfile.mkdtemp(prefix="shopformer-dashboard-"))
    write_activity_log(root / "log.csv", n_users=120, days=9)
    ds = load_dataset(prepare([root / "log.csv"], root / "ds", IngestOptions(columns=COLUMNS)).path)
    runs = [tiny_run(ds, root / f"run{seed}", seed=seed) for seed in (0, 1)]
    add_run(root / "registry", runs[0].path)
    add_run(root / "registry", runs[1].path, promote=False)
    current = load_run(root / "registry" / "current")
    write_insights(compute_insights(current, ds), root / "insights.json")
    _WORLD.append(World(root, root / "registry", root / "insights.json", list(ds.vocabs.items.tokens[1:]),
                        list(ds.vocabs.users.tokens[1:]), (runs[0].version, runs[1].version)))
    return _WORLD[0]


def fresh_registry(dst: Path) -> Path:
    """A private copy of the world's registry (tests switch versions; the ``current`` link is relative)."""
    import shutil

    shutil.copytree(world().registry, dst, symlinks=True)
    return dst


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', html)
    if found is None:
        raise AssertionError("no CSRF token on the page")
    return found.group(1)
