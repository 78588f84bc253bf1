"""Never a traceback for user error: a table of bad inputs through the real CLI app.

Every case must end with exit code 2 and exactly one output line (``error: ...`` or ``prepare
failed: ...``) that names what is wrong (the file, line or key), and no traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.pseudonym import PSEUDONYM_KEY_ENV

runner = CliRunner()
TINY = ["--set", "model.dim=16", "--set", "model.layers=1", "--set", "model.max_len=20", "--set", "train.epochs=1",
        "--set", "eval.bootstrap=20", "--quiet"]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, shop_log: Path) -> dict[str, str]:
    """Paths the cases refer to: a good data set and run, and many broken files next to them."""
    t = tmp_path_factory.mktemp("cli_errors")
    r = runner.invoke(app, ["train", str(shop_log), "-o", str(t / "run"), *TINY])
    assert r.exit_code == 0, r.output
    run = t / "run" / "model"
    (t / "good.csv").write_text("user_id,item_id,timestamp\nu1,i1,1600000000\nu2,i2,1600000001\n")
    (t / "badbyte.csv").write_bytes(b"user_id,item_id,timestamp\nu1,i1,1600000000\nu\xff,i2,1600000001\n")
    (t / "alltimebad.csv").write_text("user_id,item_id,timestamp\nu1,i1,soon\nu2,i2,later\n")
    (t / "dupheader.csv").write_text("user_id,user_id,item_id\nu1,u2,i1\n")
    (t / "events.yaml").write_text("a: 1\n")
    (t / "emptydir").mkdir()
    (t / "afile").write_text("x")
    pl.DataFrame({"user_id": [[1]], "item_id": ["a"]}).write_parquet(t / "list.parquet")
    (t / "junk.parquet").write_bytes(b"not parquet at all")
    (t / "bad_map.json").write_text("{")
    (t / "short.key").write_text("short\n")
    (t / "syntax.toml").write_text("[model]\ndim = \n")
    (t / "unknown_key.toml").write_text("[model]\nwidth = 3\n")
    (t / "wrong_type.toml").write_text("[train]\nepochs = 'many'\n")
    (t / "list.json").write_text("[1, 2]")
    (t / "latin1.toml").write_bytes(b"# caf\xe9\n[model]\ndim = 16\n")
    for name, broken in (("ds_bad_events", "events.parquet"), ("ds_bad_vocab", "vocab.json")):
        shutil.copytree(shop_log, t / name)
        (t / name / broken).write_text("{ broken")
    prepare([t / "good.csv"], t / "other_ds", IngestOptions(now=2_000_000_000))
    shutil.copytree(run, t / "run_bad_manifest")
    (t / "run_bad_manifest" / "manifest.json").write_text("{")
    shutil.copytree(run, t / "run_modified")
    with open(t / "run_modified" / "model.safetensors", "ab") as f:
        f.write(b"\0")
    return {"t": str(t), "ds": str(shop_log), "run": str(run)}


# (id, command line with {t} {ds} {run} placeholders, text the one error line must contain)
CASES: list[tuple[str, str, str]] = [
    # prepare
    ("prepare-missing-input", "prepare {t}/nope.csv -o {t}/o", "nope.csv: no such file or directory"),
    ("prepare-empty-directory", "prepare {t}/emptydir -o {t}/o", "emptydir: directory has no input files"),
    ("prepare-unknown-extension", "prepare {t}/events.yaml -o {t}/o", "cannot tell the format from '.yaml'"),
    ("prepare-unknown-format", "prepare {t}/good.csv -o {t}/o --format xml", "--format must be one of"),
    ("prepare-map-syntax", "prepare {t}/good.csv -o {t}/o --map user_id", "must look like canonical=source"),
    ("prepare-map-unknown-canonical", "prepare {t}/good.csv -o {t}/o --map shopper=user_id",
     "unknown canonical column(s) ['shopper']"),
    ("prepare-map-missing-column", "prepare {t}/good.csv -o {t}/o --map timestamp=ts",
     "timestamp='ts': no such column"),
    ("prepare-mapping-file-missing", "prepare {t}/good.csv -o {t}/o --mapping-file {t}/m.json",
     "m.json: cannot read mapping file"),
    ("prepare-mapping-file-syntax", "prepare {t}/good.csv -o {t}/o --mapping-file {t}/bad_map.json",
     "bad_map.json: cannot read mapping file: Expecting property name"),
    ("prepare-delimiter", "prepare {t}/good.csv -o {t}/o --delimiter ab", "delimiter must be one character"),
    ("prepare-start", "prepare {t}/good.csv -o {t}/o --start yesterday", "cannot parse time value 'yesterday'"),
    ("prepare-behaviour-name", "prepare {t}/good.csv -o {t}/o --behaviour-name buy", "must look like raw=name"),
    ("prepare-output-is-a-file", "prepare {t}/good.csv -o {t}/afile", "afile exists and is not a directory"),
    ("prepare-output-under-a-file", "prepare {t}/good.csv -o {t}/afile/ds", "afile is not a directory"),
    ("prepare-unknown-encoding", "prepare {t}/good.csv -o {t}/o --encoding klingon", "unknown encoding 'klingon'"),
    ("prepare-utf16", "prepare {t}/good.csv -o {t}/o --encoding utf-16", "encoding 'utf-16' is not supported"),
    ("prepare-strict-bad-byte", "prepare {t}/badbyte.csv -o {t}/o --strict",
     "badbyte.csv:3: <record>: not valid utf-8 text: byte(s) 0xff at byte offset 44"),
    ("prepare-all-rejected", "prepare {t}/alltimebad.csv -o {t}/o",
     "all 2 rows were rejected; first: {t}/alltimebad.csv:2: timestamp: unparsable timestamp 'soon'"),
    ("prepare-duplicate-header", "prepare {t}/dupheader.csv -o {t}/o",
     "dupheader.csv:1: duplicate column name(s) ['user_id']"),
    ("prepare-kcore-empty", "prepare {t}/good.csv -o {t}/o --min-user-events 5", "no events left after the k-core"),
    ("prepare-parquet-list-column", "prepare {t}/list.parquet -o {t}/o",
     "list.parquet: column 'user_id' (mapped to user_id) has type List"),
    ("prepare-not-parquet", "prepare {t}/junk.parquet -o {t}/o", "junk.parquet: not a readable Parquet file"),
    ("prepare-pseudonym-no-key", "prepare {t}/good.csv -o {t}/o --pseudonymise-users", "no pseudonym key"),
    ("prepare-pseudonym-short-key", "prepare {t}/good.csv -o {t}/o --pseudonymise-users --pseudonym-key-file "
     "{t}/short.key", "short.key: the pseudonym key has 5 bytes"),
    ("prepare-pseudonym-key-missing", "prepare {t}/good.csv -o {t}/o --pseudonymise-users --pseudonym-key-file "
     "{t}/none.key", "none.key: cannot read the pseudonym key file"),
    ("prepare-key-without-flag", "prepare {t}/good.csv -o {t}/o --pseudonym-key-file {t}/short.key",
     "--pseudonym-key-file needs --pseudonymise-users"),
    # train / tune
    ("train-missing-dataset", "train {t}/nods -o {t}/r", "nods: missing events.parquet"),
    ("train-run-dir-as-dataset", "train {run} -o {t}/r", "missing events.parquet"),
    ("train-corrupt-events", "train {t}/ds_bad_events -o {t}/r",
     "ds_bad_events/events.parquet: not a readable Parquet"),
    ("train-corrupt-vocab", "train {t}/ds_bad_vocab -o {t}/r", "ds_bad_vocab/vocab.json: unreadable"),
    ("train-config-missing", "train {ds} -o {t}/r --config {t}/none.toml", "config file not found"),
    ("train-config-syntax", "train {ds} -o {t}/r --config {t}/syntax.toml",
     "syntax.toml: cannot parse: Invalid value (at line 2, column 7)"),
    ("train-config-unknown-key", "train {ds} -o {t}/r --config {t}/unknown_key.toml",
     "invalid config ({t}/unknown_key.toml): model.width: Extra inputs are not permitted"),
    ("train-config-wrong-type", "train {ds} -o {t}/r --config {t}/wrong_type.toml", "train.epochs: Input should be"),
    ("train-config-not-a-table", "train {ds} -o {t}/r --config {t}/list.json", "list.json: a config must be a table"),
    ("train-config-not-utf8", "train {ds} -o {t}/r --config {t}/latin1.toml", "latin1.toml: not UTF-8 text"),
    ("train-set-syntax", "train {ds} -o {t}/r --set model.dim",
     "override 'model.dim' must look like section.key=value"),
    ("train-set-unknown-section", "train {ds} -o {t}/r --set modle.dim=8", "unknown config section 'modle'"),
    ("train-set-bad-value", "train {ds} -o {t}/r --set model.dim=wide", "model.dim: Input should be a valid integer"),
    ("train-set-out-of-range", "train {ds} -o {t}/r --set model.dropout=2", "model.dropout: Input should be"),
    ("train-unknown-model", "train {ds} -o {t}/r --model transformerxl", "unknown model 'transformerxl'"),
    ("train-unknown-task", "train {ds} -o {t}/r --task guess", "task.kind: Input should be"),
    ("train-output-under-a-file", "train {ds} -o {t}/afile/run", "afile is not a directory"),
    ("tune-unknown-model", "tune {ds} -o {t}/tune --model transformerxl --trials 1", "unknown model 'transformerxl'"),
    # evaluate / recommend
    ("evaluate-missing-run", "evaluate {t}/norun", "run directory not found"),
    ("evaluate-dataset-as-run", "evaluate {ds}", "missing manifest.json"),
    ("evaluate-corrupt-manifest", "evaluate {t}/run_bad_manifest", "run_bad_manifest/manifest.json: corrupted JSON"),
    ("evaluate-modified-weights", "evaluate {t}/run_modified", "model.safetensors: checksum mismatch"),
    ("evaluate-fixed-by-weights", "evaluate {run} --set model.dim=8", "model.dim is fixed by the trained weights"),
    ("evaluate-corrupt-dataset", "evaluate {run} --dataset {t}/ds_bad_vocab", "ds_bad_vocab/vocab.json: unreadable"),
    ("evaluate-other-dataset", "evaluate {run} --dataset {t}/other_ds", "other_ds: its item vocabulary is not the one"),
    ("recommend-unknown-user", "recommend {run} --user nobody", "unknown user 'nobody'"),
    ("recommend-unknown-behaviour", "recommend {run} --history i1 --behaviour zap", "unknown behaviour 'zap'"),
    ("recommend-no-user-or-history", "recommend {run}", "give exactly one of --user or --history"),
    ("recommend-k-zero", "recommend {run} --history i1 -k 0", "k must be >= 1"),
    ("recommend-missing-run", "recommend {t}/norun --history i1", "run directory not found"),
]


def test_the_table_is_big_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len({c[1] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_no_traceback(ctx: dict[str, str], args: str, expected: str) -> None:
    argv = [a.format(**ctx) for a in args.split()]
    r = runner.invoke(app, argv, env={PSEUDONYM_KEY_ENV: None, "SHOPFORMER_TRACEBACK": None})
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert len(lines) == 1, r.output
    assert lines[0].startswith(("error: ", "prepare failed: ")), lines[0]
    assert expected.format(**ctx) in lines[0], lines[0]


@pytest.mark.parametrize("args", ["nosuchcommand", "train", "recommend --min-new-share 2 x"])
def test_usage_errors_exit_2_without_traceback(args: str) -> None:
    r = runner.invoke(app, args.split())
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_traceback_on_request(ctx: dict[str, str]) -> None:
    r = runner.invoke(app, ["evaluate", f"{ctx['t']}/norun"], env={"SHOPFORMER_TRACEBACK": "1"})
    assert r.exit_code == 1 and r.exception is not None and not isinstance(r.exception, SystemExit)
