"""Multi-process training (training/distributed.py): torchrun, gloo, sharded batches, averaged gradients."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cyclic_sequences

from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays, make_train_loader
from shopformer.data.split import leave_one_out
from shopformer.training import distributed

HERE = Path(__file__).resolve().parent


def test_shards_split_every_global_batch_and_take_the_same_number_of_steps() -> None:
    seq = cyclic_sequences(n_users=45)
    split = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.max_len=8", "train.batch_size=8", "train.seed=3"])
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    whole = make_train_loader(cfg, seq, split.train_end, arrays)
    shards = [whole.shard(r, 2) for r in range(2)]
    full = [b.items.numpy() for b in make_train_loader(cfg, seq, split.train_end, arrays)]
    parts = [[b.items.numpy() for b in s] for s in shards]
    assert len(parts[0]) == len(parts[1]) == len(full) == len(whole)  # same steps, same schedule
    for f, a, b in zip(full, parts[0], parts[1], strict=True):
        rows = {r.tobytes() for r in f}
        assert {r.tobytes() for r in a} | {r.tobytes() for r in b} == rows  # together: the global batch
        if len(f) >= 2:
            assert len(a) + len(b) == len(f)  # disjoint halves
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        whole.shard(2, 2)


def test_a_single_process_is_rank_0_of_1_and_every_helper_is_a_no_op() -> None:
    assert distributed.world() == (0, 1) and distributed.is_main()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.average_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert distributed.on_main(lambda: 7)() == 7 and distributed.sum_over_ranks(1.5) == 1.5


def test_bad_launch_settings_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPFORMER_DIST_BACKEND", "mpi")
    with pytest.raises(ValueError, match="use 'gloo'"):
        distributed.backend(on_gpu=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.launched_world()


def test_joining_a_group_registers_its_teardown_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that exits with its gloo group open can abort (pytorch/pytorch#190489): setup registers
    the teardown that closes it, and the teardown leaves the group."""
    import torch.distributed as dist

    registered = []
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the group itself is a one-process one
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    join = dist.init_process_group
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: join(
        backend, store=dist.HashStore(), rank=0, world_size=1))
    assert distributed.setup() == (0, 1) and registered == [distributed.teardown]
    distributed.teardown()
    assert not dist.is_initialized() and distributed.world() == (0, 1)
    distributed.teardown()  # nothing open: a no-op


def test_two_processes_end_with_identical_weights_and_rank_0_alone_writes(shop_log: Path, tmp_path: Path) -> None:
    out, weights = tmp_path / "run", tmp_path / "weights"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOPFORMER_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "ddp_worker.py"), str(shop_log), str(out), str(weights)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((weights / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["table"] and not info[1]["table"]  # rank 0 tests and reports, rank 1 only trains
    assert info[0]["valid_ndcg@10"] == info[1]["valid_ndcg@10"]  # validated once, on rank 0, shared
    s0, s1 = (torch.load(weights / f"rank{r}.pt") for r in range(2))
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    # one run, written once: the training log has one row per epoch, not one per rank
    with (out / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (out / "model").is_dir() and (out / "metrics.json").exists()
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["valid"]["ndcg@10"])


def test_torchrun_with_a_multi_task_config_is_a_one_line_error(shop_log: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from shopformer.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group forms
    r = CliRunner().invoke(app, ["train", str(shop_log), "-o", str(tmp_path / "run"), "--task", "multi"])
    assert r.exit_code == 2 and "supports task.kind='next-item', not 'multi'" in r.output
    assert not (tmp_path / "run").exists()
