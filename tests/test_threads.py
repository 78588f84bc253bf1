"""The training thread count: explicit, SHOPFORMER_THREADS, else the cores free at start."""

from __future__ import annotations

import pytest

from shopformer.training.threads import ThreadsError, available_cores, choose_threads, free_cores


def test_free_cores_subtracts_the_load() -> None:
    assert free_cores(2, 0.0) == 2  # idle: every core
    assert free_cores(2, 0.4) == 2
    assert free_cores(2, 0.6) == 1
    assert free_cores(2, 14.9) == 1  # never below one
    assert free_cores(16, 3.4) == 13
    assert free_cores(4, -1.0) == 4  # never above the cores


def test_precedence_config_then_env_then_auto() -> None:
    assert choose_threads(3, env="2", cores=8, load1=0.0).threads == 3
    env = choose_threads(None, env="2", cores=8, load1=7.0)
    assert (env.threads, env.source) == (2, "env") and "SHOPFORMER_THREADS" in env.describe()
    auto = choose_threads(None, env="", cores=8, load1=5.2)
    assert (auto.threads, auto.source) == (3, "auto")
    assert "auto: 8 cores available, 1-min load 5.2" in auto.describe()


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_env_value_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ThreadsError, match="SHOPFORMER_THREADS"):
        choose_threads(None, env=bad, cores=2, load1=0.0)


def test_reads_this_machine_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPFORMER_THREADS", raising=False)
    choice = choose_threads(None)
    assert choice.source == "auto" and 1 <= choice.threads <= available_cores() == choice.cores
