"""A fast, representative subset of ``bench/bad_inputs.py`` (the full corpus: >= 200 distinct bad
inputs, HTTP and files): no 5xx, no traceback, no silent change (a refused input accepted, or the
store, ledger or served model changed by one), and every broken row quarantined or refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bad_inputs import bad_rows, http_cases, run_files, run_http  # noqa: E402

HTTP_SUBSET = {
    "events/timestamp-2^63", "events/timestamp-10^400", "events/timestamp-ms", "events/timestamp-feb30",
    "events/user_id-long", "events/price-NaN", "events/behaviour-and-event_type", "events/extra-field",
    "events/event-null", "events-body/not-json", "events-body/too-many", "events-body/too-large",
    "events-body/nested-deep", "events-body/utf8-invalid", "events-auth/read-key", "recommendations/k-201",
    "recommendations/behaviour-unknown", "recommendations/share-nan", "recommendations/user-long",
    "adhoc/timestamp-2^63", "adhoc/history-too-long", "adhoc/k-bool", "similar/unknown-item",
    "delete/ingest-key", "delete/id-long", "reload/very-long", "reload/dotdot", "reload/absolute-outside",
    "reload/corrupt-run", "reload/nul", "route/wrong-method",
}
ROW_SUBSET = {"time-2^63", "time-1e400", "user-257", "bad-utf8", "too-many-fields", "time-feb30"}


def test_corpus_is_large_and_distinct() -> None:
    names = [c[0] for c in http_cases(1000)] + [f"row/{n}" for n, _ in bad_rows()]
    assert len(names) == len(set(names)) and len(names) >= 190  # + whole files, configs, runs in the bench
    assert set(names) >= HTTP_SUBSET


def test_http_subset_no_5xx_no_traceback_no_silent_change(tmp_path: Path) -> None:
    res = run_http(tmp_path, HTTP_SUBSET)
    assert res["cases"] == len(HTTP_SUBSET)
    assert res["status_5xx"] == [] and res["tracebacks"] == [] and res["silent_changes"] == []


def test_file_subset_quarantined_or_refused(tmp_path: Path) -> None:
    res = run_files(tmp_path, ROW_SUBSET, whole=False)
    assert res["row_cases"] == len(ROW_SUBSET)
    assert res["failures"] == [] and res["tracebacks"] == [], res["outcomes"]
