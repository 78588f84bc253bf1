import json

import numpy as np
import pytest
import torch
from conftest import cyclic_sequences

from shopformer.artifacts import ArtifactError, load_run, save_run
from shopformer.config import Config, apply_overrides
from shopformer.data.corpus import DataSpec
from shopformer.data.vocab import Vocab, Vocabs
from shopformer.models import build_model
from shopformer.recommender import History, Recommender, describe_actions


@pytest.fixture()
def run_dir(tmp_path):
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=10", "eval.exclude_seen=true"])
    spec = DataSpec(n_items=60, n_behaviours=2, has_time=True)
    torch.manual_seed(0)
    model = build_model(cfg.model, spec)
    vocabs = Vocabs(
        users=Vocab(("<pad>", "u1")),
        items=Vocab(("<pad>", *[f"i{i}" for i in range(1, 61)])),
        behaviours=Vocab(("<pad>", "view", "buy")),
        categories=Vocab(("<pad>",)),
    )
    counts = np.arange(61)
    return save_run(tmp_path / "run", model, cfg, vocabs, counts, np.zeros(61, np.int64), {"test": {}})


def test_round_trip_gives_identical_scores(run_dir) -> None:
    run = load_run(run_dir)
    rec = Recommender(run)
    h = History(["i3", "i10", "i17"], ["view", "buy", "view"], [100, 200, 4000])
    batch = rec.make_batch([rec._encode(h)[:3]])
    fresh = Recommender.load(run_dir)
    assert torch.allclose(run.model.score_all(batch), fresh.model.score_all(batch))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["package"] == "shopformer" and manifest["version_id"].startswith("sasrec-")


def test_recommend_excludes_seen_and_padding(run_dir) -> None:
    rec = Recommender.load(run_dir)
    out = rec.recommend(["i3", "i10"], k=60)
    assert "i3" not in out.items and "i10" not in out.items and "<pad>" not in out.items
    assert len(out.items) == 58
    assert out.scores == sorted(out.scores, reverse=True)
    kept = rec.recommend(["i3", "i10"], k=60, exclude_seen=False)
    assert len(kept.items) == 60


def test_unknown_items_are_skipped_with_a_warning(run_dir) -> None:
    rec = Recommender.load(run_dir)
    with pytest.warns(UserWarning, match="unknown item"):
        out = rec.recommend(["i3", "nope", "i4"], k=5)
    assert out.skipped == ["nope"] and not out.fallback
    same = rec.recommend(["i3", "i4"], k=5)
    assert out.items == same.items


def test_history_of_only_unknown_items_falls_back_to_popularity(run_dir) -> None:
    rec = Recommender.load(run_dir)
    with pytest.warns(UserWarning):
        out = rec.recommend(["x", "y"], k=3)
    assert out.fallback and out.items == ["i60", "i59", "i58"]


def test_batch_equals_single(run_dir) -> None:
    rec = Recommender.load(run_dir)
    hs = [History(["i1", "i2"]), History(["i5"]), History(["i7", "i8", "i9", "i10"])]
    many = rec.recommend_many(hs, k=5)
    for h, m in zip(hs, many, strict=True):
        one = rec.recommend(h.items, k=5)
        assert one.items == m.items
        assert one.scores == pytest.approx(m.scores, rel=1e-4, abs=1e-5)


def test_similar_items(run_dir) -> None:
    rec = Recommender.load(run_dir)
    out = rec.similar_items("i5", k=4)
    assert len(out.items) == 4 and "i5" not in out.items
    with pytest.raises(KeyError):
        rec.similar_items("nope")


def test_next_item_run_has_no_heads_and_actions_are_described_most_likely_first(run_dir) -> None:
    rec = Recommender.load(run_dir)
    assert rec.head_parts == () and rec.target_behaviour is None
    assert describe_actions({"pv": 0.2, "buy": 0.7, "cart": 0.1}) == "buy 0.700, pv 0.200, cart 0.100"
    assert describe_actions({"pv": 0.25, "buy": 0.75}, 2) == "buy 0.75, pv 0.25"


def test_missing_weights_is_a_clear_error(run_dir) -> None:
    (run_dir / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing model.safetensors"):
        load_run(run_dir)


def test_corrupted_weights_is_a_clear_error(run_dir) -> None:
    p = run_dir / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_run(run_dir)


def test_truncated_weights_without_verification_is_still_an_error(run_dir) -> None:
    p = run_dir / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ArtifactError):
        load_run(run_dir, verify=False)


def test_missing_manifest_means_incomplete_run(run_dir) -> None:
    (run_dir / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not a complete run"):
        load_run(run_dir)


def test_config_in_run_with_unknown_key_is_rejected(run_dir) -> None:
    p = run_dir / "config.json"
    raw = json.loads(p.read_text())
    raw["config"]["train"]["lr"] = 1
    p.write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"train\.lr"):
        load_run(run_dir, verify=False)


def test_no_pickle_in_artifacts(run_dir) -> None:
    for f in run_dir.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"


def test_sequences_from_lists_matches_cyclic_fixture() -> None:
    seq = cyclic_sequences(n_users=3)
    assert seq.offsets[-1] == len(seq.items) and seq.has_time
