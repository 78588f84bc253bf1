"""``shopformer export RUN --format onnx``, the parity check, and the onnxruntime backend.

One export (through the CLI, on the real histories of a prepared shop log) is shared by the module:
torch.onnx takes seconds per export.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from shopformer.artifacts import ArtifactError, load_run
from shopformer.cli.app import app
from shopformer.config import ModelConfig, TaskConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import load_dataset
from shopformer.onnx_encoder import CHECK_FILE, ENCODER_FILE, OnnxBackendError, OnnxEncoder, OnnxExportError
from shopformer.recommender import History, Recommender, RecRequest
from shopformer.serving.ann import ExactIndex
from shopformer.serving.app import create_app
from shopformer.serving.settings import ServeSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import synthetic_run  # noqa: E402

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install '.[onnx]') is not installed")

# LiGR blocks: what `shopformer train` builds by default (configs/default.toml); pre-LN is exported in the
# parity test below
TINY = ModelConfig(dim=16, layers=1, heads=2, max_len=12, dropout=0.0, emb_dropout=0.0, norm="ligr")


@pytest.fixture(scope="module")
def exported(shop_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over the shop log's vocabulary, exported by the CLI (checked on the log's histories)."""
    return export_run(tmp_path_factory.mktemp("onnx") / "run", shop_log, TINY, seed=3, histories=40)


def export_run(path: Path, shop_log: Path, model: ModelConfig, seed: int, histories: int) -> Path:
    """A run of ``model`` over the shop log's vocabulary at ``path``, exported by the CLI."""
    ds = load_dataset(shop_log)
    run = synthetic_run(path, list(ds.vocabs.items.tokens[1:]), model,
                        behaviours=tuple(ds.vocabs.behaviours.tokens[1:]), seed=seed)
    res = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--dataset", str(shop_log),
                                   "--histories", str(histories)])
    assert res.exit_code == 0, res.output
    assert "max abs diff vs PyTorch" in " ".join(res.output.split())
    return run


def random_batches(rec: Recommender, seed: int = 0) -> list[Batch]:
    """Histories of every length 1..max_len + 5 (longer ones are cut to the window), odd batch sizes."""
    rng = np.random.default_rng(seed)
    n_items, n_beh = rec.spec.n_items, rec.spec.n_behaviours
    out = []
    for size in (1, 3, 17):
        enc = []
        for _ in range(size):
            n = int(rng.integers(1, rec.max_len + 6))
            times = np.cumsum(rng.integers(0, 90_000, n)) + 1_600_000_000
            enc.append((rng.integers(1, n_items + 1, n).tolist(), rng.integers(1, n_beh + 1, n).tolist(),
                        times.tolist()))
        out.append(rec.make_batch(enc))
    return out


def test_cli_writes_graph_and_parity_record(exported: Path) -> None:
    record = json.loads((exported / CHECK_FILE).read_text())
    check = record["check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and check["histories"] == 40
    shapes = [tuple(s) for s in check["batch_shapes"]]
    assert (1, TINY.max_len) in shapes and any(b == 1 and w < TINY.max_len for b, w in shapes)  # both axes vary
    assert record["model_version"] == load_run(exported).version and record["inputs"][0] == "items"
    assert not list(exported.glob(".*.tmp"))  # atomic: no temporary file left


def test_onnx_vectors_match_pytorch_on_new_shapes(exported: Path) -> None:
    rec = Recommender.load(exported)
    enc = OnnxEncoder.load(rec.run)
    for batch in random_batches(rec):
        with torch.inference_mode():
            ref = rec.model.last_hidden(batch)
        got = enc(batch)
        assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4


def test_pre_ln_blocks_export_within_tolerance(shop_log: Path, tmp_path: Path) -> None:
    """The other block layout a run may hold (``model.norm = "pre"``) exports with the same parity."""
    run = export_run(tmp_path / "pre", shop_log, TINY.model_copy(update={"norm": "pre"}), seed=4, histories=20)
    assert json.loads((run / CHECK_FILE).read_text())["check"]["max_abs_diff"] <= 1e-4


def test_both_backends_rank_the_same(exported: Path) -> None:
    torch_rec, onnx_rec = Recommender.load(exported), Recommender.load(exported, backend="onnx")
    assert onnx_rec.backend == "onnx"
    items = list(torch_rec.vocabs.items.tokens[1:])
    rng = np.random.default_rng(1)
    reqs = [RecRequest(History([items[i] for i in rng.integers(0, len(items), int(rng.integers(1, 20)))]), k=10,
                       exclude_seen=bool(j % 2)) for j in range(40)]
    reqs.append(RecRequest(History(["no-such-item"]), k=5))  # popularity fallback on both
    index = ExactIndex(torch_rec.model.output_embeddings().detach().float())
    for idx in (None, index):
        a, b = torch_rec.recommend_requests(reqs, idx), onnx_rec.recommend_requests(reqs, idx)
        for x, y in zip(a, b, strict=True):
            assert x.items == y.items and x.repeat == y.repeat
            assert np.allclose(x.scores, y.scores, atol=1e-4)


def test_service_answers_the_same_with_either_backend(exported: Path, tmp_path: Path) -> None:
    answers = {}
    for backend in ("torch", "onnx"):
        settings = ServeSettings.model_validate({
            "run_dir": exported, "store_url": f"sqlite:///{tmp_path / backend / 'state.db'}",
            "forget_ledger": tmp_path / backend / "ledger.jsonl", "backend": backend, "ingest_key": "k"})
        (tmp_path / backend).mkdir()
        items = list(load_run(exported).vocabs.items.tokens[1:6])
        with TestClient(create_app(settings)) as c:
            events = [{"user_id": "u1", "item_id": it, "behaviour": "look", "timestamp": 1_600_000_000 + i}
                      for i, it in enumerate(items)]
            assert c.post("/v1/events", json={"events": events}, headers={"Authorization": "Bearer k"}).status_code \
                == 200
            user = c.get("/v1/users/u1/recommendations", params={"k": 10}).json()
            adhoc = c.post("/v1/recommendations", json={"history": [{"item_id": i} for i in items[:3]], "k": 10}).json()
        answers[backend] = [[(x["item_id"], x["repeat"]) for x in r["items"]] for r in (user, adhoc)]
        assert len(answers[backend][0]) == 10
    assert answers["torch"] == answers["onnx"]


def test_stale_corrupt_or_missing_graph_is_refused(exported: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(exported, run)
    with open(run / ENCODER_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(OnnxBackendError, match="checksum mismatch"):
        Recommender.load(run, backend="onnx")
    shutil.copy(exported / ENCODER_FILE, run / ENCODER_FILE)
    record = json.loads((run / CHECK_FILE).read_text())
    (run / CHECK_FILE).write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    with pytest.raises(OnnxBackendError, match="stale"):
        Recommender.load(run, backend="onnx")
    (run / CHECK_FILE).unlink()
    with pytest.raises(OnnxBackendError, match="shopformer export"):
        Recommender.load(run, backend="onnx")
    settings = ServeSettings.model_validate({"run_dir": run, "store_url": f"sqlite:///{tmp_path / 's.db'}",
                                             "forget_ledger": tmp_path / "l.jsonl", "backend": "onnx"})
    with pytest.raises(OnnxBackendError), TestClient(create_app(settings)):  # the service does not start
        pass


def test_failed_parity_check_writes_nothing(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that disagrees with PyTorch is refused, and the previous export stays as it was."""
    import shopformer.onnx_encoder as oe

    run = tmp_path / "copy"
    shutil.copytree(exported, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    class Program:  # the graph exported above, but the run's weights are changed below: parity fails
        def save(self, path: str) -> None:
            shutil.copy(exported / ENCODER_FILE, path)

    monkeypatch.setattr(oe, "_export_program", lambda model: Program())
    loaded = load_run(run)
    with torch.no_grad():
        loaded.model.item_emb.weight.mul_(3.0)
    rec = Recommender(loaded)
    with pytest.raises(OnnxExportError, match="differs from PyTorch"):
        oe.export_encoder(loaded, random_batches(rec))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_heads_model_needs_the_torch_backend(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "heads", [f"i{i}" for i in range(30)], TINY, task=TaskConfig(kind="multi"))
    with pytest.raises(ArtifactError, match="backend 'torch'"):
        Recommender.load(run, backend="onnx")


def test_cli_errors_are_one_line(exported: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(exported), "--format", "tflite"])
    assert res.exit_code == 2 and "--format 'tflite'" in res.output
    res = CliRunner().invoke(app, ["export", str(exported), "--format", "onnx"])  # no data set recorded
    assert res.exit_code == 2 and "pass --dataset" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--dataset", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
