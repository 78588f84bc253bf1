"""`make demo` runs this path: it must work on a fresh clone (bundled data only)."""

from rich.console import Console

from shopformer.demo import run_demo


def test_demo_end_to_end_with_a_tiny_budget(tmp_path) -> None:
    console = Console(record=True, width=140)
    run_demo(tmp_path / "demo", max_minutes=0.01, console=console)
    text = console.export_text()
    assert "| sasrec |" in text and "| popularity |" in text and "| markov |" in text
    assert text.count("recent history (oldest first)") == 3
    for name in ("report.md", "metrics_at_k.png", "training_curve.png", "model/model.safetensors"):
        assert (tmp_path / "demo" / name).exists(), name
