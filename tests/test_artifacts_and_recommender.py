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


def test_an_answer_does_not_depend_on_its_batch(run_dir) -> None:
    """Histories with and without timestamps batched together: each row keeps its own gap features."""
    from shopformer.recommender import RecRequest

    rec = Recommender.load(run_dir)
    timed = History(["i3", "i10", "i17"], ["view", "buy", "view"], [100, 200, 4000])
    untimed = History(["i4", "i11"], ["view", "view"])
    alone = rec.recommend_many([timed], k=60)[0]
    mixed = rec.recommend_many([timed, untimed], k=60)
    assert mixed[0].items == alone.items and mixed[0].scores == pytest.approx(alone.scores, abs=1e-5)
    assert mixed[1].items == rec.recommend_many([untimed], k=60)[0].items
    reqs = rec.recommend_requests([RecRequest(timed, 60), RecRequest(untimed, 60)])
    assert reqs[0].items == alone.items and reqs[0].scores == pytest.approx(alone.scores, abs=1e-5)
    # and the timestamps do matter for this model, so the test would see them dropped
    assert rec.recommend_many([History(timed.items, timed.behaviours)], k=60)[0].scores != pytest.approx(
        alone.scores, abs=1e-5)


def test_unknown_behaviours_in_a_history_are_skipped_and_reported(run_dir) -> None:
    rec = Recommender.load(run_dir)
    with pytest.warns(UserWarning, match=r"unknown behaviour.*'teleport'.*known: view, buy"):
        out = rec.recommend(["i3", "i10", "i17"], k=10, behaviours=["view", "teleport", "buy"])
    assert out.skipped_behaviours == ["teleport"] and out.skipped == [] and not out.fallback
    # the event is left out, never read as another type (e.g. the most frequent one)
    assert out.pairs() == rec.recommend(["i3", "i17"], k=10, behaviours=["view", "buy"]).pairs()
    assert out.pairs() != rec.recommend(["i3", "i10", "i17"], k=10, behaviours=["view", "view", "buy"]).pairs()
    with pytest.warns(UserWarning, match="unknown behaviour"):
        only = rec.recommend(["i3"], k=3, behaviours=["teleport"])
    assert only.fallback and only.skipped_behaviours == ["teleport"]
    assert rec.knows_behaviour("buy") and not rec.knows_behaviour("teleport") and not rec.knows_behaviour("<pad>")


def test_ranking_behaviours_resolve_through_the_vocabulary(run_dir) -> None:
    from shopformer.data.vocab import UnknownBehaviourError
    from shopformer.recommender import ANY_BEHAVIOUR

    rec = Recommender.load(run_dir)  # a next-item model: no behaviour-specific head
    with pytest.raises(UnknownBehaviourError, match=r"unknown behaviour 'teleport'; known: view, buy"):
        rec.behaviour_id("teleport")
    with pytest.raises(ValueError, match="no behaviour-specific head"):
        rec.behaviour_id("buy")
    assert rec.behaviour_id(ANY_BEHAVIOUR) == 0 and rec.behaviour_id(None) is None
    with pytest.raises(UnknownBehaviourError):
        rec.recommend(["i3"], behaviour="teleport")


def test_the_window_is_the_models_not_the_configs(run_dir) -> None:
    run = load_run(run_dir)
    assert run.model.max_len == 10  # from the config the model was built with
    run.config = run.config.override(model={"max_len": 100})  # e.g. an override after loading
    rec = Recommender(run)
    assert rec.max_len == run.model.max_len == 10
    batch = rec.make_batch([rec._encode(History([f"i{i}" for i in range(1, 31)]))[:3]])
    assert batch.items.shape[1] == 10


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
