"""`make demo` runs this path: it must work on a fresh clone (bundled data only)."""

from rich.console import Console

from shopformer.pipelines.demo import run_demo


def test_demo_end_to_end_with_a_tiny_budget(tmp_path) -> None:
    console = Console(record=True, width=140)
    run_demo(tmp_path / "demo", console, epochs=1)
    text = console.export_text()
    for row in ("| sasrec |", "| popularity |", "| markov |", "| recent items |", "| majority class |"):
        assert row in text, row
    assert text.count("recent history (oldest first)") == 3
    assert text.count("top-5 likely 'buy'") == 3 and text.count("P(buy within the next 10 events) = ") == 3
    assert text.count("top-5 new to them") == 3
    for row in ("| weighted recent items |", "| co-occurrence |", "NDCG@10 repeat", "NDCG@10 explore"):
        assert row in text, row
    for name in ("report.md", "confusion_sasrec.png", "reliability_sasrec.png", "training_curve.png",
                 "model/model.safetensors"):
        assert (tmp_path / "demo" / name).exists(), name
