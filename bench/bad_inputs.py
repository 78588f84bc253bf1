"""Bad inputs, HTTP and files: 0 responses 5xx, 0 tracebacks, 0 silent changes (issue 12's target).

HTTP: a generated corpus of distinct bad requests (every endpoint: each event field broken in each
way, malformed and oversized bodies, bad queries and paths, wrong keys, reloads outside the root)
against the real app (in-process, SQLite store, real lifespan). Per request it counts a 5xx, a
traceback (a log record carrying an exception), and a *silent change*: a 2xx for a refused input,
or any change of the store's tables, the deletion ledger or the served model.

Files: a generated corpus of event files, each N good rows plus one broken row (or a wholly broken
file), through ``shopformer prepare`` (the real CLI app). A case passes with exit 2 and one line
naming the problem, or exit 0 with the broken row quarantined (``rows_rejected`` or ``errors`` >= 1)
and exactly the N good events kept; a traceback, another exit code, a kept broken row or a lost
good row fail it. Plus broken configs, overrides and run directories through ``train`` /
``recommend`` (exit 2, one line), with nothing written.

    nice -n 5 .venv/bin/python bench/bad_inputs.py      # -> bench/results/bad_inputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import torch
from common import provenance
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from shopformer.cli import app as cli
from shopformer.config import ModelConfig
from shopformer.serving import ServeSettings, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_support import synthetic_run  # noqa: E402

ITEMS = [f"i{i}" for i in range(30)]
ING, ADM, READ = "ingest-key", "admin-key", "read-key"
GOOD = {"user_id": "u1", "item_id": "i1", "timestamp": 1_700_000_000, "behaviour": "pv"}
RAW = object()  # marks a body given as raw bytes


def _event_mutations() -> list[tuple[str, dict[str, Any] | str]]:
    """(name, fields merged into a good event, or a raw JSON text replacing the event)."""
    out: list[tuple[str, dict[str, Any] | str]] = []
    bad_ids: list[tuple[str, Any]] = [("none", None), ("empty", ""), ("long", "x" * 300), ("int", 5), ("list", []),
                                      ("object", {}), ("bool", True), ("float", 1.5)]
    for field in ("user_id", "item_id"):
        out += [(f"{field}-{n}", {field: v}) for n, v in bad_ids]
    for field in ("behaviour", "session_id", "category_id", "event_id"):
        out += [(f"{field}-{n}", {field: v}) for n, v in bad_ids if n not in ("none",)]
    for n, v in [("2^63", 2**63), ("2^63-1", 2**63 - 1), ("2^53+1", 2**53 + 1), ("ms", 1_700_000_000_000),
                 ("negative", -1), ("fraction", 2.5), ("word", "soon"), ("feb30", "2023-02-30"),
                 ("bool", True), ("list", [1]), ("1e20", 1e20), ("iso-garbage", "2023-13-01T00:00:00Z"),
                 ("empty", ""), ("year-99999", "99999-01-01"), ("object", {"s": 1})]:
        out.append((f"timestamp-{n}", {"timestamp": v}))
    for n, v in [("negative", -1.0), ("string", "cheap"), ("list", [1]), ("bool", True), ("huge-string", "1e400")]:
        out.append((f"price-{n}", {"price": v}))
    out += [("timestamp-1e400", '{"user_id":"u1","item_id":"i1","timestamp":1e400}'),
            ("timestamp-10^400", '{"user_id":"u1","item_id":"i1","timestamp":' + "1" + "0" * 400 + "}"),
            ("price-NaN", '{"user_id":"u1","item_id":"i1","price":NaN}'),
            ("price-Infinity", '{"user_id":"u1","item_id":"i1","price":Infinity}'),
            ("price-1e400", '{"user_id":"u1","item_id":"i1","price":1e400}'),
            ("extra-field", {"colour": "red"}), ("behaviour-and-event_type", {"event_type": "buy"}),
            ("missing-user", '{"item_id":"i1"}'), ("missing-item", '{"user_id":"u1"}'),
            ("event-null", "null"), ("event-number", "1"), ("event-list", '["u1","i1"]'), ("event-string", '"u1"')]
    return out


def http_cases(max_batch: int) -> list[tuple[str, str, str, dict[str, str], Any]]:
    """(name, method, url, headers, json body | (RAW, bytes) | None). Every one must be refused."""
    ing = {"Authorization": f"Bearer {ING}"}
    adm = {"Authorization": f"Bearer {ADM}"}
    rd = {"Authorization": f"Bearer {READ}"}
    cases: list[tuple[str, str, str, dict[str, str], Any]] = []
    for name, m in _event_mutations():
        ev = m if isinstance(m, str) else json.dumps({**GOOD, **m})
        body = f'{{"events":[{json.dumps(GOOD)},{ev}]}}'.encode()  # a good event first: nothing may be stored
        cases.append((f"events/{name}", "POST", "/v1/events", {**ing, "content-type": "application/json"},
                      (RAW, body)))
    bodies: list[tuple[str, bytes]] = [
        ("empty", b""), ("not-json", b"{"), ("single-quotes", b"{'events': []}"), ("trailing-comma",
         b'{"events":[],}'), ("top-list", b"[]"), ("top-string", b'"x"'), ("top-null", b"null"), ("no-events", b"{}"),
        ("events-null", b'{"events":null}'), ("events-object", b'{"events":{}}'), ("events-string", b'{"events":"x"}'),
        ("extra-key", b'{"events":[],"more":1}'), ("utf8-invalid", b'{"events":[{"user_id":"\xff","item_id":"a"}]}'),
        ("nested-deep", b'{"events":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("too-many", json.dumps({"events": [GOOD] * (max_batch + 1)}).encode()),
        ("too-large", b'{"events":[' + b",".join([json.dumps({**GOOD, "item_id": "x" * 200}).encode()] * 6000) + b"]}"),
        ("truncated", json.dumps({"events": [GOOD]}).encode()[:-3]), ("nul-byte", b'{"events":[\x00]}'),
    ]
    cases += [(f"events-body/{n}", "POST", "/v1/events", {**ing, "content-type": "application/json"}, (RAW, b))
              for n, b in bodies]
    good_batch = {"events": [GOOD]}
    for n, h in [("no-auth", {}), ("wrong-key", {"Authorization": "Bearer nope"}), ("basic", {"Authorization":
                 "Basic dTpw"}), ("empty-bearer", {"Authorization": "Bearer "}), ("admin-key", adm), ("read-key", rd)]:
        cases.append((f"events-auth/{n}", "POST", "/v1/events", h, good_batch))
    rec = "/v1/users/u1/recommendations"
    for n, q in [("k-0", "k=0"), ("k-negative", "k=-1"), ("k-201", "k=201"), ("k-word", "k=a"), ("k-fraction", "k=1.5"),
                 ("behaviour-empty", "behaviour="), ("behaviour-unknown", "behaviour=zap"),
                 ("behaviour-long", "behaviour=" + "b" * 300), ("share-2", "min_new_share=2"),
                 ("share-negative", "min_new_share=-0.1"), ("share-nan", "min_new_share=nan"),
                 ("share-inf", "min_new_share=inf"), ("share-word", "min_new_share=x"),
                 ("exclude-maybe", "exclude_seen=maybe"), ("explain-maybe", "explain=maybe")]:
        cases.append((f"recommendations/{n}", "GET", f"{rec}?{q}", rd, None))
    cases += [("recommendations/user-long", "GET", f"/v1/users/{'u' * 300}/recommendations", rd, None),
              ("recommendations/no-auth", "GET", rec, {}, None),
              ("recommendations/wrong-key", "GET", rec, {"Authorization": "Bearer nope"}, None),
              ("metrics/no-auth", "GET", "/metrics", {}, None)]
    hist = [{"item_id": "i1"}, {"item_id": "i2"}]
    for n, b in [("history-missing", {}), ("history-object", {"history": {}}), ("history-null", {"history": None}),
                 ("item-missing", {"history": [{}]}), ("item-int", {"history": [{"item_id": 5}]}),
                 ("item-long", {"history": [{"item_id": "x" * 300}]}),
                 ("timestamp-2^63", {"history": [{"item_id": "i1", "timestamp": 2**63}]}),
                 ("timestamp-word", {"history": [{"item_id": "i1", "timestamp": "soon"}]}),
                 ("timestamp-negative", {"history": [{"item_id": "i1", "timestamp": -5}]}),
                 ("k-0", {"history": hist, "k": 0}), ("k-201", {"history": hist, "k": 201}),
                 ("k-word", {"history": hist, "k": "x"}), ("k-fraction", {"history": hist, "k": 2.5}),
                 ("k-bool", {"history": hist, "k": True}),
                 ("behaviour-unknown", {"history": hist, "behaviour": "zap"}),
                 ("behaviour-empty", {"history": hist, "behaviour": ""}),
                 ("share-2", {"history": hist, "min_new_share": 2}),
                 ("extra-key", {"history": hist, "colour": "red"}), ("explain-word", {"history": hist, "explain": "x"}),
                 ("history-too-long", {"history": [{"item_id": "i1"}] * 1001}),
                 ("history-behaviour-int", {"history": [{"item_id": "i1", "behaviour": 3}]})]:
        cases.append((f"adhoc/{n}", "POST", "/v1/recommendations", rd, b))
    cases += [("adhoc/not-json", "POST", "/v1/recommendations", {**rd, "content-type": "application/json"},
               (RAW, b"{")), ("adhoc/no-auth", "POST", "/v1/recommendations", {}, {"history": hist})]
    for n, url in [("unknown-item", "/v1/items/nope/similar"), ("k-0", "/v1/items/i1/similar?k=0"),
                   ("k-1000", "/v1/items/i1/similar?k=1000"), ("k-word", "/v1/items/i1/similar?k=x"),
                   ("item-long", f"/v1/items/{'x' * 300}/similar")]:
        cases.append((f"similar/{n}", "GET", url, rd, None))
    for n, h, uid in [("no-auth", {}, "u1"), ("wrong-key", {"Authorization": "Bearer nope"}, "u1"),
                      ("ingest-key", ing, "u1"), ("read-key", rd, "u1"), ("id-long", adm, "u" * 300)]:
        cases.append((f"delete/{n}", "DELETE", f"/v1/users/{uid}", h, None))
    for n, b in [("missing", {}), ("empty", {"run_dir": ""}), ("long", {"run_dir": "r" * 300}),
                 ("very-long", {"run_dir": "r" * 5000}), ("absolute-outside", {"run_dir": "/etc"}),
                 ("dotdot", {"run_dir": "../../../etc"}), ("nonexistent", {"run_dir": "no_such_run"}),
                 ("a-file", {"run_dir": "afile"}), ("not-a-run", {"run_dir": "emptydir"}),
                 ("corrupt-run", {"run_dir": "corrupt_run"}), ("int", {"run_dir": 5}), ("nul", {"run_dir": "a\u0000b"}),
                 ("extra-key", {"run_dir": "run", "x": 1})]:
        cases.append((f"reload/{n}", "POST", "/v1/admin/reload", adm, b))
    cases += [("reload/no-auth", "POST", "/v1/admin/reload", {}, {"run_dir": "run"}),
              ("reload/ingest-key", "POST", "/v1/admin/reload", ing, {"run_dir": "run"}),
              ("route/unknown", "GET", "/v1/nothing", {}, None), ("route/wrong-method", "PUT", "/v1/events", ing, None),
              ("route/delete-collection", "DELETE", "/v1/users", adm, None)]
    return cases


class ExceptionLog(logging.Handler):
    """Counts log records carrying an exception (a traceback in the service's log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.n += 1


def store_digest(db: Path, ledger: Path) -> str:
    """Every row of every table of the store, plus the ledger's bytes."""
    h = hashlib.sha256(ledger.read_bytes() if ledger.exists() else b"")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
            for row in con.execute(f'SELECT * FROM "{name}" ORDER BY 1'):
                h.update(repr(row).encode())
    finally:
        con.close()
    return h.hexdigest()


def run_http(work: Path, only: set[str] | None = None) -> dict[str, Any]:
    """The HTTP corpus (or the cases named in ``only``) against the app; counts as in the module text."""
    root = work / "runs"
    run = synthetic_run(root / "run", ITEMS, ModelConfig(dim=16, layers=1, heads=1, max_len=20))
    (root / "afile").write_text("x")
    (root / "emptydir").mkdir()
    shutil.copytree(run, root / "corrupt_run")
    with open(root / "corrupt_run" / "model.safetensors", "ab") as f:
        f.write(b"\0")
    db, ledger = work / "state.db", work / "ledger.jsonl"
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{db}", forget_ledger=ledger, ingest_key=ING,
                             admin_key=ADM, read_key=READ, reload_root=root, served_log=False)
    handler = ExceptionLog()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    cases = [c for c in http_cases(settings.max_events_per_batch) if only is None or c[0] in only]
    out: dict[str, Any] = {"cases": len(cases), "distinct": len({c[0] for c in cases}), "status_5xx": [],
                           "tracebacks": [], "silent_changes": [], "status_counts": {}}
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            seed = c.post("/v1/events", headers={"Authorization": f"Bearer {ING}"}, json={"events": [
                {**GOOD, "item_id": f"i{i}", "timestamp": GOOD["timestamp"] + i} for i in range(5)]})
            assert seed.status_code == 200, seed.text
            version = c.get("/healthz").json()["model_version"]
            for name, method, url, headers, body in cases:
                before, tb = store_digest(db, ledger), handler.n
                if isinstance(body, tuple) and body and body[0] is RAW:
                    r = c.request(method, url, headers=headers, content=body[1])
                else:
                    r = c.request(method, url, headers=headers, json=body)
                out["status_counts"][str(r.status_code)] = out["status_counts"].get(str(r.status_code), 0) + 1
                if r.status_code >= 500:
                    out["status_5xx"].append([name, r.status_code, r.text[:200]])
                if handler.n > tb:
                    out["tracebacks"].append(name)
                changed = store_digest(db, ledger) != before or c.get("/healthz").json()["model_version"] != version
                if r.status_code < 400 or changed:
                    out["silent_changes"].append([name, r.status_code, "store/model changed" if changed else
                                                  "accepted"])
    finally:
        logging.getLogger().removeHandler(handler)
    return out


# ------------------------------------------------------------------------------------------ files
HEADER = "user_id,item_id,timestamp,behaviour"
GOOD_ROWS = [f"u{u},i{(u * 3 + j) % 20},{1_600_000_000 + 100 * u + j},view" for u in range(8) for j in range(3)]


def bad_rows() -> list[tuple[str, bytes]]:
    """One broken CSV row each (inserted among the good rows)."""
    rows: list[tuple[str, bytes]] = [
        ("user-empty", b",i1,1600000500,view"), ("item-empty", b"u1,,1600000500,view"),
        ("time-empty", b"u1,i1,,view"), ("time-word", b"u1,i1,soon,view"),
        ("time-2^63", b"u1,i1,9223372036854775808,view"),
        ("time-10^400", b"u1,i1,1" + b"0" * 400 + b",view"), ("time-1e400", b"u1,i1,1e400,view"),
        ("time-negative", b"u1,i1,-5,view"), ("time-nan", b"u1,i1,NaN,view"), ("time-inf", b"u1,i1,inf,view"),
        ("time-feb30", b"u1,i1,2023-02-30,view"), ("time-month13", b"u1,i1,2023-13-01T00:00:00Z,view"),
        ("time-year-99999", b"u1,i1,99999-01-01,view"), ("time-hex", b"u1,i1,0x5f5e100,view"),
        ("time-bool", b"u1,i1,true,view"), ("behaviour-empty", b"u1,i1,1600000500,"),
        ("too-few-fields", b"u1,i1"), ("too-many-fields", b"u1,i1,1600000500,view,extra,more"),
        ("bad-utf8", b"u\xff\xfe,i1,1600000500,view"), ("latin1-name", b"caf\xe9,i1,1600000500,view"),
        ("user-huge", b"u" * 100_000 + b",i1,1600000500,view"),
        ("item-huge", b"u1," + b"i" * 100_000 + b",1600000500,view"), ("user-257", b"u" * 257 + b",i1,1600000500,view"),
        ("only-commas", b",,,"), ("whitespace-user", b"   ,i1,1600000500,view"), ("tab-item", b"u1,\t,1600000500,view"),
        ("time-fraction-garbage", b"u1,i1,1600000500.5.5,view"), ("time-spaces", b"u1,i1,16 00,view"),
    ]
    return rows


# Not bad input: ids are any string of 1..256 characters, over HTTP and in files alike (a NUL, a
# byte-order mark or a lone quote inside an id is kept verbatim, as the API keeps it).
ACCEPTED_AS_DATA = [b"u1\x00,i1,1600000500,view", b"\xef\xbb\xbfu1,i1,1600000500,view", b'"u1,i1,1600000500,view']


def whole_files() -> list[tuple[str, str, bytes]]:
    """(name, file name, content): files with nothing usable; prepare must exit 2 with one line."""
    return [
        ("empty-file", "e.csv", b""), ("header-only", "h.csv", HEADER.encode() + b"\n"),
        ("newline-only", "n.csv", b"\n\n"), ("binary-garbage", "g.csv", bytes(range(256)) * 4),
        ("no-user-column", "c.csv", b"item_id,timestamp\ni1,1600000000\n"),
        ("no-item-column", "d.csv", b"user_id,timestamp\nu1,1600000000\n"),
        ("duplicate-header", "dup.csv", b"user_id,user_id,item_id\nu1,u2,i1\n"),
        ("all-times-bad", "t.csv", b"user_id,item_id,timestamp\nu1,i1,x\nu2,i2,y\n"),
        ("json-not-lines", "j.jsonl", b"[1, 2, 3]\n"), ("json-garbage", "k.jsonl", b"{not json\n{also not\n"),
        ("parquet-junk", "p.parquet", b"PAR1 not really"), ("gzip-not-gzip", "z.csv.gz", b"plain text, not gzip"),
        ("utf16-file", "u.csv", (HEADER + "\nu1,i1,1600000000,view\n").encode("utf-16")),
        ("directory-empty", "emptydir", b""), ("unknown-extension", "x.xlsx", b"PK\x03\x04"),
    ]


def run_files(work: Path, rows: set[str] | None = None, whole: bool = True) -> dict[str, Any]:
    """The file corpus (``rows``: only these broken rows; ``whole``: also whole files, configs, runs)."""
    runner = CliRunner()
    env = {"SHOPFORMER_TRACEBACK": None, "SHOPFORMER_PSEUDONYM_KEY": None}
    res: dict[str, Any] = {"row_cases": 0, "file_cases": 0, "other_cases": 0, "tracebacks": [], "failures": [],
                           "outcomes": {}}

    def invoke(argv: list[str]) -> Any:
        r = runner.invoke(cli, argv, env=env)
        if "Traceback" in r.output or (r.exception is not None and not isinstance(r.exception, SystemExit)):
            res["tracebacks"].append(" ".join(argv[:2]))
        return r

    def one_line_exit_2(r: Any) -> bool:
        lines = [x for x in r.output.splitlines() if x.strip()]
        return r.exit_code == 2 and len(lines) == 1

    for name, row in bad_rows():
        if rows is not None and name not in rows:
            continue
        res["row_cases"] += 1
        d = work / "rows" / name
        d.mkdir(parents=True)
        lines = [HEADER.encode(), *[g.encode() for g in GOOD_ROWS[:10]], row, *[g.encode() for g in GOOD_ROWS[10:]]]
        (d / "in.csv").write_bytes(b"\n".join(lines) + b"\n")
        r = invoke(["prepare", str(d / "in.csv"), "-o", str(d / "out")])
        if one_line_exit_2(r):
            outcome = "refused"
        elif r.exit_code == 0:
            stats = json.loads((d / "out" / "stats.json").read_text())
            kept = pl.read_parquet(d / "out" / "events.parquet").height
            quarantined = stats.get("rows_rejected", 0) + stats.get("errors", 0) + stats.get("blank_lines", 0)
            outcome = "quarantined" if quarantined >= 1 and kept == len(GOOD_ROWS) else (
                f"silent: kept {kept} of {len(GOOD_ROWS)} good, {quarantined} quarantined")
        else:
            outcome = f"exit {r.exit_code}: {r.output.strip()[:160]}"
        res["outcomes"][f"row/{name}"] = outcome
        if outcome not in ("refused", "quarantined"):
            res["failures"].append([f"row/{name}", outcome])
    if not whole:
        return res
    (work / "files" / "emptydir").mkdir(parents=True)
    for name, fname, content in whole_files():
        res["file_cases"] += 1
        p = work / "files" / fname
        if not p.exists():
            p.write_bytes(content)
        out = work / "files" / f"out_{name}"
        r = invoke(["prepare", str(p), "-o", str(out)])
        ok = one_line_exit_2(r) and not (out / "events.parquet").exists()
        res["outcomes"][f"file/{name}"] = "refused" if ok else f"exit {r.exit_code}: {r.output.strip()[:160]}"
        if not ok:
            res["failures"].append([f"file/{name}", res["outcomes"][f"file/{name}"]])
    # configs and run directories: refused with one line, nothing written
    ds = work / "ds"
    (work / "good.csv").write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n")
    assert invoke(["prepare", str(work / "good.csv"), "-o", str(ds)]).exit_code == 0
    run = synthetic_run(work / "run", ITEMS, ModelConfig(dim=16, layers=1, heads=1, max_len=20))
    cfgs = {"syntax": "[model]\ndim = \n", "unknown-key": "[model]\nwidth = 3\n",
            "wrong-type": "[train]\nepochs = 'x'\n",
            "negative-epochs": "[train]\nepochs = -1\n", "zero-dim": "[model]\ndim = 0\n",
            "huge-dropout": "[model]\ndropout = 5\n", "unknown-section": "[modle]\ndim = 8\n",
            "nan-lr": "[train]\nlearning_rate = nan\n", "not-utf8": "# caf\udce9\n",
            "top-level-key": "dim = 8\n", "dp-negative-noise": "[train.dp]\nnoise_multiplier = -1\n"}
    for name, text in cfgs.items():
        res["other_cases"] += 1
        p = work / "cfg" / f"{name}.toml"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        out = work / "cfg" / f"run_{name}"
        r = invoke(["train", str(ds), "-o", str(out), "--config", str(p), "--quiet"])
        ok = one_line_exit_2(r) and not out.exists()
        res["outcomes"][f"config/{name}"] = "refused" if ok else f"exit {r.exit_code}: {r.output.strip()[:160]}"
        if not ok:
            res["failures"].append([f"config/{name}", res["outcomes"][f"config/{name}"]])
    breakers: dict[str, Callable[[Path], None]] = {
        "manifest-truncated": lambda d: (d / "manifest.json").write_text("{"),
        "manifest-deleted": lambda d: (d / "manifest.json").unlink(),
        "weights-appended": lambda d: (d / "model.safetensors").open("ab").write(b"\0"),
        "weights-deleted": lambda d: (d / "model.safetensors").unlink(),
        "vocab-garbage": lambda d: (d / "vocab.json").write_text("[]"),
        "config-garbage": lambda d: (d / "config.json").write_text("{"),
        "weights-zeroed": lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64),
    }
    for name, brk in breakers.items():
        res["other_cases"] += 1
        d = work / "runs" / name
        shutil.copytree(run, d)
        brk(d)
        r = invoke(["recommend", str(d), "--history", "i1"])
        ok = one_line_exit_2(r)
        res["outcomes"][f"run/{name}"] = "refused" if ok else f"exit {r.exit_code}: {r.output.strip()[:160]}"
        if not ok:
            res["failures"].append([f"run/{name}", res["outcomes"][f"run/{name}"]])
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bad_inputs.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shopformer-bad-inputs-") as tmp:
        http = run_http(Path(tmp) / "http")
        files = run_files(Path(tmp) / "files")
    total = http["distinct"] + files["row_cases"] + files["file_cases"] + files["other_cases"]
    res = {**provenance(__file__), "distinct_bad_inputs": total, "http_cases": http["distinct"],
           "file_cases": files["row_cases"] + files["file_cases"] + files["other_cases"],
           "responses_5xx": len(http["status_5xx"]), "tracebacks": len(http["tracebacks"]) + len(files["tracebacks"]),
           "silent_changes": len(http["silent_changes"]), "file_failures": len(files["failures"]),
           "http": http, "files": files, "seconds": round(time.monotonic() - t0, 1),
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("http", "files")}))
    for key in ("status_5xx", "tracebacks", "silent_changes"):
        for x in http[key]:
            print(f"http {key}: {x}")
    for x in files["failures"] + files["tracebacks"]:
        print(f"files: {x}")


if __name__ == "__main__":
    main()
