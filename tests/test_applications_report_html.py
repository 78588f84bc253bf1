"""report.html: a self-contained page per run. It parses as HTML, holds no URL (opens offline),
escapes ids and names from the data, and shows the sections whose data exist (metrics with CIs,
repeat / explore, training curve, recorded applications, example explanations)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from applications_support import prepare_demo, tiny_run
from typer.testing import CliRunner

from shopformer.evaluation.report_svg import bar_chart, line_chart, table
from shopformer.pipelines.applications.report_html import (
    build_html,
    record_application,
    report_dir,
    write_html_report,
)

EVIL = '<script>alert("x")</script>&'


class Checker(HTMLParser):
    """Collects tags, flags unbalanced elements and every attribute that could load something."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "circle", "rect", "line", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "script":
            self.scripts += 1
            if any(k == "src" for k, _ in attrs):
                self.errors.append("external script")
        if tag in ("link", "img", "iframe") or any(k in ("href", "src", "xlink:href") for k, _ in attrs):
            self.errors.append(f"loads something: {tag} {attrs}")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def check(html: str) -> Checker:
    c = Checker()
    c.feed(html)
    c.close()
    assert not c.errors, c.errors[:5]
    assert c.stack == [], c.stack
    assert html.startswith("<!doctype html>")
    assert not re.search(r"(https?:|ftp:|//[a-z0-9.-]+\.[a-z]{2,}|@import|url\()", html, re.I), "external reference"
    assert EVIL not in html and "<script>alert" not in html
    return c


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> Path:
    """An experiment folder: model/, metrics.json with CIs and repeat/explore, train_log.csv, report.md."""
    tmp = tmp_path_factory.mktemp("report")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    out = tmp / "exp"
    tiny_run(ds, out / "model")
    m = {"hr@10": 0.2, "ndcg@10": 0.1, "mrr": 0.08, "n": 50, "ci95": {"hr@10": [0.15, 0.25], "ndcg@10": [0.07, 0.13]},
         "repeat": {"ndcg@10": 0.3, "share": 0.25}, "explore": {"ndcg@10": 0.02}}
    metrics = {"protocol": "temporal split", "warnings": [f"baseline {EVIL} wins"],
               "test": {"sasrec": m, f"pop {EVIL}": {**m, "ndcg@10": 0.05}}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "train_log.csv").write_text("epoch,loss,lr,epoch_seconds,valid_ndcg@10,valid_hr@10\n"
                                       "1,9.5,0.001,3,0.05,0.1\n2,9.1,0.001,3,0.07,0.12\n3,8.9,0.001,3,0.08,0.13\n")
    (out / "report.md").write_text("# report\n")
    return out


def test_report_parses_has_no_urls_and_escapes(experiment: Path) -> None:
    html = build_html(experiment, examples=2)
    c = check(html)
    assert c.scripts == 1 and "svg" in c.tags and "table" in c.tags
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html  # the system name and the warning
    for section in ("Ranking metrics", "Training curves", "Example explanations", "repeat targets", "[0.1500, 0.2500]"):
        assert section in html
    assert "Applications" not in html  # nothing recorded yet


def test_recorded_applications_and_hostile_ids(experiment: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    churn = {"days": 1.0, "churn_of": "any event", "systems": {s: {
        "roc_auc": 0.7, "pr_auc": 0.3, "ece": 0.02, "log_loss": 0.4, "positive_rate": 0.1, "n": 300,
        "reliability": {"mean_prob": [0.05, 0.15, float("nan")], "observed": [0.04, 0.2, float("nan")],
                        "count": [100, 50, 0]}} for s in ("model+rfm", "rfm_logistic")}}
    forecast = {"level": "item", "behaviour": "buy", "horizon_seconds": 86400, "interval": 0.8, "coverage": 0.82,
                "best_baseline": "naive last period", "wape_ratio_to_best_baseline": 0.85,
                "summary": {"model": {"all": {"wape": 0.9, "mase": 0.7}, "head": {"wape": 0.5}, "tail": {"wape": 1.0}}},
                "origins": [{"actual_total_all_series": 10.0 + i, "predicted_totals": {"model": 9.0 + i},
                             "top_series": [{"series": EVIL, "actual": 3.0, "expected": 2.5, "lo": 1.0, "hi": 4.0}]}
                            for i in range(3)]}
    trends = {"level": "category", "summary": {"model": {"spearman": 0.4, "precision_risers": 0.5,
                                                         "precision_fallers": 0.4}},
              "origins": [{"systems": {"model": {"spearman": 0.3 + 0.1 * i}}} for i in range(3)]}
    explain = {"user": EVIL, "examples": [{"item": EVIL, "explanation": f"because you viewed {EVIL}",
                                           "reasons": [{"item": EVIL, "behaviour": "pv", "position": 0,
                                                        "weight": 0.5}]}]}
    for kind, m in (("churn", churn), ("forecast_item", forecast), ("trends_category", trends), ("explain", explain)):
        path = record_application(exp / "model", kind, m)  # the model dir finds its experiment folder
        assert path == exp / "applications" / f"{kind}.json"
    (exp / "applications" / "forecast_old.json").write_text(json.dumps({"origins": "not a list"}))
    html = write_html_report(exp, examples=0).read_text()
    check(html)
    for text in ("churn calibration", "forecast vs actual", "Spearman per test origin", "because you viewed",
                 "forecast_old.json: not shown"):
        assert text in html, text
    # a bare model directory (e.g. an immutable registry version) is never written into
    bare = tmp_path / "bare"
    shutil.copytree(experiment / "model", bare)
    assert record_application(bare, "churn", churn) is None and not (bare / "applications").exists()
    assert report_dir(bare) == bare and report_dir(exp / "model") == exp


def test_charts_and_tables_escape_and_handle_gaps() -> None:
    svg = line_chart({EVIL: ([1, 2, 3], [0.1, None, float("nan")])}, EVIL, "x", "y")
    assert EVIL not in svg and "&lt;script&gt;" in svg
    assert "no data" in line_chart({"a": ([], [])}, "empty", "x", "y")
    assert "no data" in bar_chart([], [], title="t")
    assert EVIL not in table([EVIL], [[EVIL]])


def test_cli_report_and_pipeline_writes_it(experiment: Path, tmp_path: Path) -> None:
    from shopformer.cli import app

    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    r = CliRunner().invoke(app, ["report", str(exp / "model"), "--examples", "0"])
    assert r.exit_code == 0, r.output
    assert (exp / "report.html").exists() and "Example explanations" not in (exp / "report.html").read_text()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run directory" in r.output
    write_html_report(exp)
    check((exp / "report.html").read_text())
