"""In-process parts of serving: micro-batcher, item indexes, per-request ranking, settings."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from serving_support import synthetic_run

from shopformer.config import ModelConfig, TaskConfig
from shopformer.models import REGISTRY
from shopformer.recommender import History, Recommender, RecRequest
from shopformer.serving.ann import ExactIndex, FaissIndex, build_index
from shopformer.serving.batching import BatcherClosed, MicroBatcher
from shopformer.serving.engine import Engine
from shopformer.serving.settings import ServeSettings

ITEMS = [f"i{i}" for i in range(60)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("run") / "model", ITEMS,
                         ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0))


@pytest.fixture(scope="module")
def rec(run_dir: Path) -> Recommender:
    return Recommender.load(run_dir)


# ------------------------------------------------------------------------------ micro-batching
def test_batcher_coalesces_concurrent_requests() -> None:
    sizes: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        time.sleep(0.01)  # a "forward pass": later arrivals queue up meanwhile
        return [x * 10 for x in xs]

    async def go() -> list[int]:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(fn, ex, max_batch=8)
            out = await asyncio.gather(*(b.submit(i) for i in range(30)))
            await b.close()
            return out

    assert asyncio.run(go()) == [i * 10 for i in range(30)]
    assert sum(sizes) == 30 and max(sizes) <= 8 and len(sizes) < 30


def test_batcher_errors_reach_the_right_callers() -> None:
    def fn(xs: list[int]) -> list[int | BaseException]:
        if -1 in xs:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"bad {x}") if x == 3 else x for x in xs]

    async def go() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(fn, ex, max_batch=16)
            res = await asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
            assert res[:3] == [0, 1, 2] and isinstance(res[3], ValueError) and res[4] == 4
            with pytest.raises(RuntimeError, match="whole batch"):
                await b.submit(-1)
            assert await b.submit(7) == 7  # the worker survived
            await b.close()
            with pytest.raises(BatcherClosed):
                await b.submit(1)

    asyncio.run(go())


def test_batcher_close_drains_queued_work() -> None:
    started = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        started.set()
        time.sleep(0.02)
        return xs

    async def go() -> list[int]:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(fn, ex, max_batch=2)
            tasks = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
            await asyncio.sleep(0)
            await b.close()  # queued before close: all still answered
            return await asyncio.gather(*tasks)

    assert asyncio.run(go()) == list(range(6))


# ------------------------------------------------------------------------ per-request ranking
def test_recommend_requests_matches_recommend_many(rec: Recommender) -> None:
    hists = [History(["i1", "i2", "i3"], ["pv", "cart", "pv"], [10, 20, 30]),
             History(["i5", "unknown-x", "i7"]),
             History(["nope"]),
             History([])]
    reqs = [RecRequest(hists[0], 5, True), RecRequest(hists[1], 3, False), RecRequest(hists[2], 4),
            RecRequest(hists[3], 2)]
    out = rec.recommend_requests(reqs)
    with pytest.warns(UserWarning):
        ref0 = rec.recommend_many([hists[0]], 5, True)[0]
        ref1 = rec.recommend_many([hists[1]], 3, False)[0]
    assert out[0].items == ref0.items and out[0].scores == pytest.approx(ref0.scores, rel=1e-5)
    assert not set(out[0].items) & {"i1", "i2", "i3"}
    assert out[1].items == ref1.items and out[1].skipped == ["unknown-x"]
    assert out[2].fallback and out[2].skipped == ["nope"] and out[2].items == rec.popular(4).items
    assert out[3].fallback and len(out[3].items) == 2
    alone = [rec.recommend_requests([r])[0] for r in reqs]  # an answer never depends on its batch
    assert [a.items for a in alone] == [o.items for o in out]
    with pytest.raises(ValueError, match="behaviour"):
        rec.recommend_requests([RecRequest(hists[0], 5, behaviour="buy")])


@pytest.mark.parametrize(("name", "task"), [(n, "next-item") for n in sorted(REGISTRY)] + [("sasrec", "multi")])
def test_batched_short_histories_score_like_full_windows(name: str, task: str, tmp_path: Path) -> None:
    """recommend_requests trims all-padding columns; no registered model (or task head) may notice."""
    run = synthetic_run(tmp_path / name, ITEMS, ModelConfig(name=name, dim=16, layers=1, heads=1, max_len=12),
                        task=TaskConfig(kind=task))
    r = Recommender.load(run)
    hists = [History(["i1", "i2", "i3"], ["pv", "cart", "pv"], [10, 50, 4000]), History(["i9"], ["buy"], [7]),
             History([f"i{j}" for j in range(1, 16)], ["pv"] * 15, list(range(0, 1500, 100)))]
    behaviours = [None, "buy"] if task == "multi" else [None]
    for b in behaviours:
        got = r.recommend_requests([RecRequest(h, 8, False, b) for h in hists])
        for h, g in zip(hists, got, strict=True):
            ref = r.recommend_many([h], 8, False, b)[0]
            assert g.items == ref.items and g.scores == pytest.approx(ref.scores, rel=1e-4, abs=1e-5)


def test_exact_index_gives_the_same_answer_as_score_all(rec: Recommender) -> None:
    index = ExactIndex(rec.model.output_embeddings())
    reqs = [RecRequest(History(["i1", "i2"]), 7, True), RecRequest(History(["i9"] * 3), 4, False)]
    a, b = rec.recommend_requests(reqs), rec.recommend_requests(reqs, index)
    for x, y in zip(a, b, strict=True):
        assert x.items == y.items
        assert x.scores == pytest.approx(y.scores, rel=1e-5)
    assert "i1" not in b[0].items and "i2" not in b[0].items and len(b[0].items) == 7


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 2), dim)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.2 * rng.normal(size=(n, dim)).astype(np.float32)


def test_faiss_index_recall_on_clustered_items() -> None:
    vecs = torch.from_numpy(np.vstack([np.zeros((1, 16), np.float32), clustered(4000, 16)]))
    ann, exact = FaissIndex(vecs, nprobe=8, threads=1), ExactIndex(vecs)
    assert ann.recall_at_10 is not None and ann.recall_at_10 > 0.8
    q = vecs[1:33] + 0.05 * torch.randn(32, 16)
    _, a = ann.search(q, 10)
    _, e = exact.search(q, 10)
    overlap = np.mean([len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(a, e, strict=True)])
    assert overlap > 0.8
    assert (a != 0).all(), "padding is never returned"
    assert isinstance(build_index(vecs, faiss_threshold=10_000), ExactIndex)
    assert isinstance(build_index(vecs, faiss_threshold=100, cosine=True), FaissIndex)


def test_engine_similar_matches_recommender(run_dir: Path, rec: Recommender) -> None:
    with ThreadPoolExecutor(1) as ex:
        exact = Engine.load(run_dir, ServeSettings(), ex)
        assert exact.index_kind == "exact" and exact.rec_index is None
        got, ref = exact.similar("i4", 5), rec.similar_items("i4", 5)
        assert got.items == ref.items and got.scores == pytest.approx(ref.scores, rel=1e-5)
        with pytest.raises(KeyError):
            exact.similar("nope", 5)
        assert exact.popular(3).items == rec.popular(3).items and exact.popular(3).fallback
        big = Engine.load(run_dir, ServeSettings(faiss_threshold=10, faiss_nprobe=64), ex)  # every list probed
        assert big.index_kind == "faiss-ivf"
        assert big.similar("i4", 5).items == ref.items
        reqs = [RecRequest(History(["i1", "i2"]), 6, True)]
        assert big._run_batch(reqs)[0].items == rec.recommend_requests(reqs)[0].items


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPFORMER_MAX_K", "5")
    monkeypatch.setenv("SHOPFORMER_API_KEY", "s3cret")
    monkeypatch.setenv("SHOPFORMER_STORE_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("SHOPFORMER_SOMETHING_ELSE", "ignored")
    s = ServeSettings(port=9)
    assert s.max_k == 5 and s.port == 9 and s.store_url.startswith("redis://")
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret" and "s3cret" not in repr(s)


def test_create_app_builds_nothing_until_started(tmp_path: Path) -> None:
    from shopformer.serving import create_app

    app = create_app(ServeSettings(run_dir=tmp_path / "does-not-exist", store_url=f"sqlite:///{tmp_path}/s.db"))
    assert not hasattr(app.state, "svc") and not (tmp_path / "s.db").exists()
    paths = set(app.openapi()["paths"])
    assert {"/v1/events", "/v1/users/{user_id}/recommendations", "/v1/recommendations",
            "/v1/items/{item_id}/similar", "/v1/users/{user_id}", "/healthz", "/readyz", "/metrics",
            "/v1/admin/reload"} <= paths


def test_scope_guard_without_a_configured_key_refuses_writes() -> None:
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from shopformer.serving.auth import scope_guard

    app = FastAPI()
    guard = scope_guard(ServeSettings(api_key=None), "ingest")
    assert guard is not None and scope_guard(ServeSettings(), "read") is None  # reads open without a read key

    @app.post("/w", dependencies=[Depends(guard)])
    def write() -> dict:
        return {}

    c = TestClient(app)
    assert c.post("/w").status_code == 401
    r = c.post("/w", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "no ingest key" in r.json()["detail"]


def test_serve_command_is_typer_compatible() -> None:
    import typer
    from typer.testing import CliRunner

    from shopformer.cli.serve import serve_command

    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("other")(lambda: None)  # a multi-command app, as in shopformer.cli
    res = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for flag in ("run_dir", "--port", "--store", "--api-key-file", "--threads", "--faiss-threshold", "SHOPFORMER_HOST"):
        assert flag in res.output.lower() if flag.islower() else flag in res.output
