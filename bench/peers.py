"""Side by side with RecBole: SASRec of both systems on the same file, in the same run (one after the other, or
at the same moment with ``--concurrent``).

    .venv/bin/python bench/peers.py                         # Amazon Beauty (../shared/data/amazon_beauty)
    .venv/bin/python bench/peers.py --data taobao-pv        # Taobao UserBehavior head, `pv` events only (CSV path)
    .venv/bin/python bench/peers.py --recbole-budget-s 2700 --recbole-max-epochs 15 --threads 1
    .venv/bin/python bench/peers.py --reuse-recbole --shopformer-batch-size 32 --shopformer-untied
    .venv/bin/python bench/peers.py --concurrent --recbole-max-epochs 30 --recbole-budget-s 3000 \
        --shopformer-batch-size 32 --shopformer-untied     # both at the same moment, one process each

Builds the RecBole 1.2.1 environment of ``../shared/peers/README.md`` in a cache folder when it is missing
(``--venv``, default ``~/.cache/shopformer-peers/recbole-venv``; outside git), then runs, each in its own
process so that peak RSS is each system's own:

1. RecBole SASRec through ``../shared/peers/recbole_run.py`` (CE loss, validation NDCG@10 stopping with
   ``--recbole-patience``, plus an epoch and time budget because the machine is shared);
2. shopformer SASRec with the same model size (d=64, 2 layers, 2 heads, dropout 0.5, batch 256, max length
   50), the same seen-item rule (``eval.exclude_seen = false``: RecBole cannot remove seen items), the same
   thread count and validation NDCG@10 early stopping (patience 10), never given more wall time than
   RecBole's training took (``train.max_minutes``), so the two test rows are at equal (or less) wall time;
   ``--shopformer-untied`` gives it its own output item table (``model.tie_output = false``): with seen items
   kept, a tied model ranks the user's newest event first in most rankings (``bench/seen_items.py``);
   ``--shopformer-norm`` picks its blocks (default ``ligr``, as configs/default.toml; runs before stop 24 used
   pre-LN, the files without a ``_ligr`` tag);
3. the report: validation NDCG@10 against wall and CPU time for both (``bench/figures/peers_<data>.png``),
   the time each needs to reach RecBole's best validation NDCG@10, test metrics, peak RSS, and the load
   average before / after each stage and sampled during it (``bench/results/peers_<data>.json``).

Wall time is the training loop's: epochs plus their validations, from the first epoch on (data loading is
reported apart, ``prep_s``). Both stages run the same leave-one-out split of the same file, full ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "out" / "peers"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shopformer-peers" / "recbole-venv"
SOURCES = {"beauty": DATA / "amazon_beauty" / "Beauty.txt",
           "taobao-pv": DATA / "taobao_userbehavior" / "UserBehavior_head.csv"}
MODEL = {"dim": 64, "layers": 2, "heads": 2, "dropout": 0.5, "max_len": 50, "batch_size": 256}
METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


# ------------------------------------------------------------------------------------------ environment


def ensure_venv(venv: Path) -> dict:
    """The RecBole venv of ../shared/peers/README.md, built (about 1.6 GB) when missing."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import recbole, torch; print(recbole.__version__, torch.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return {"venv": str(venv), "built": False, "versions": subprocess.run(check, capture_output=True,
                                                                              text=True).stdout.strip()}
    t0 = time.time()
    venv.parent.mkdir(parents=True, exist_ok=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    for cmd in ([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)],
                [*pip, "torch==2.13.0"],  # first, so pip never resolves a CUDA build
                [*pip, "recbole==1.2.1", "numpy<2", "pandas<3", "setuptools<81"]):
        subprocess.run(cmd, check=True)
    versions = subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip()
    return {"venv": str(venv), "built": True, "build_s": round(time.time() - t0, 1), "versions": versions}


def input_file(data: str, work: Path, max_users: int | None) -> tuple[Path, str, str]:
    """(file both systems read, its recbole_run format, a note on what it holds)."""
    src = SOURCES[data]
    if data == "beauty":
        return src, "lines", "Amazon Beauty (S3-Rec version), one line per user, all users"
    # Taobao UserBehavior (headerless user,item,category,behaviour,ts): the `pv` events as the CSV recbole_run
    # reads (user_id,item_id,timestamp), first `max_users` users in file order (a sample; None = all)
    out = work / "taobao_pv.csv"
    users: set[str] = set()
    with src.open() as f, out.open("w") as g:
        g.write("user_id,item_id,timestamp\n")
        for line in f:
            user, item, _cat, behaviour, ts = line.rstrip("\n").split(",")
            if behaviour != "pv":
                continue
            if user not in users:
                if max_users is not None and len(users) >= max_users:
                    continue
                users.add(user)
            g.write(f"{user},{item},{ts}\n")
    note = f"Taobao UserBehavior head (84k rows), pv events only, {len(users)} users" + (
        f" (first {max_users} in file order)" if max_users else " (all in the file)")
    return out, "csv", note


class LoadSampler:
    """os.getloadavg() before, during (every ``every`` s) and after a stage."""

    def __init__(self, every: float = 15.0) -> None:
        self.every, self.samples, self._stop = every, [], threading.Event()

    def __enter__(self) -> LoadSampler:
        self.before = os.getloadavg()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.after = os.getloadavg()

    def summary(self) -> dict:
        s = self.samples
        return {"before": [round(x, 2) for x in self.before], "after": [round(x, 2) for x in self.after],
                "load1_mean_during": round(sum(s) / len(s), 2) if s else None,
                "load1_max_during": round(max(s), 2) if s else None, "cpus": os.cpu_count()}


# ------------------------------------------------------------------------------------------ stages


def run_recbole(args: argparse.Namespace, venv: Path, path: Path, fmt: str, work: Path) -> dict:
    out = work / "recbole.json"
    cmd = [str(venv / "bin" / "python"), str(PEERS / "recbole_run.py"), "--data", str(path), "--format", fmt,
           "--model", "SASRec", "--hidden", str(MODEL["dim"]), "--layers", str(MODEL["layers"]),
           "--heads", str(MODEL["heads"]), "--dropout", str(MODEL["dropout"]),
           "--max-seq-len", str(MODEL["max_len"]), "--batch-size", str(MODEL["batch_size"]),
           "--max-epochs", str(args.recbole_max_epochs), "--patience", str(args.recbole_patience),
           "--time-budget-s", str(args.recbole_budget_s), "--threads", str(args.threads),
           "--seed", str(args.seed), "--json-out", str(out)]
    log_path = work / "recbole.log"
    with LoadSampler() as load, log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        cpu_marks = follow_recbole(proc, log_path)
    if proc.returncode != 0:
        raise SystemExit(f"RecBole failed (exit {proc.returncode}); see {log_path}")
    res = json.loads(out.read_text())
    res["command"] = " ".join(cmd)
    res["load"] = load.summary()
    # the validation curve against the training loop's wall time: each epoch's own training seconds, plus the
    # harness's mean validation (+ checkpoint) seconds per epoch (it records their total only)
    extra = (res["fit_wall_s"] - res["train_wall_s"]) / max(len(res["valid_scores"]), 1)
    wall, curve = 0.0, []
    for epoch, (tr, score) in enumerate(zip(res["train_epoch_s"], res["valid_scores"], strict=False), start=1):
        wall += tr + extra
        cpu = cpu_marks["valid"][epoch - 1] - cpu_marks["fit_start"] if len(cpu_marks["valid"]) >= epoch else None
        curve.append({"epoch": epoch, "wall_s": round(wall, 2), "cpu_s": None if cpu is None else round(cpu, 2),
                      "valid_ndcg@10": score})
    res["curve"] = curve
    return res


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow_recbole(proc: subprocess.Popen, log_path: Path) -> dict:
    """Wait for RecBole while reading its log: the process's CPU seconds when training starts (its
    "[Evaluation]: ..." data-loader line, the last before ``fit``) and when each validation is logged
    ("epoch N evaluating [...]"), so its curve also has CPU time, which a shared machine's load barely moves."""
    marks: dict = {"fit_start": None, "valid": []}
    seen = 0
    while True:
        done = proc.poll() is not None
        text = log_path.read_text(errors="replace")
        lines = text[seen:].splitlines(keepends=True)
        for line in lines:
            if not line.endswith("\n") and not done:
                break
            seen += len(line)
            try:
                cpu = cpu_seconds(proc.pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                cpu = None
            if marks["fit_start"] is None and "[Evaluation]" in line:
                marks["fit_start"] = cpu
            elif " evaluating [" in line and cpu is not None:
                marks["valid"].append(cpu)
        if done:
            break
        time.sleep(0.5)
    marks["fit_start"] = marks["fit_start"] or 0.0
    return marks


def suffix(batch_size: int, untied: bool, epochs: int, norm: str) -> str:
    """File-name tag of a shopformer batch size other than RecBole's, of untied output vectors, of a schedule
    length other than 60 epochs and of blocks other than pre-LN (stage files and the result file)."""
    return (("" if batch_size == MODEL["batch_size"] else f"_batch{batch_size}") + ("_untied" if untied else "")
            + ("" if epochs == 60 else f"_epochs{epochs}") + ("" if norm == "pre" else f"_{norm}"))


def start_shopformer_stage(args: argparse.Namespace, path: Path, fmt: str, out: Path,
                           budget_s: float) -> subprocess.Popen:
    """The shopformer stage in its own process (so its peak RSS is its own), writing ``out``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", "shopformer", "--data", args.data,
           "--input", str(path), "--input-format", fmt, "--threads", str(args.threads), "--seed", str(args.seed),
           "--budget-s", f"{budget_s:.1f}", "--epochs", str(args.shopformer_epochs), "--out-json", str(out),
           "--batch-size", str(args.shopformer_batch_size), "--norm", args.shopformer_norm]
    cmd += ["--untied"] if args.shopformer_untied else []
    with out.with_suffix(".log").open("w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def finish_shopformer_stage(proc: subprocess.Popen, out: Path, load: LoadSampler | None = None) -> dict:
    if proc.wait() != 0:
        raise SystemExit(f"the shopformer stage failed (exit {proc.returncode}); see {out.with_suffix('.log')}")
    res = json.loads(out.read_text())
    res["command"] = " ".join(map(str, proc.args))
    if load is not None:
        res.setdefault("load", load.summary())
    out.write_text(json.dumps(res) + "\n")  # complete, for --report-only
    return res


def shopformer_stage(args: argparse.Namespace) -> None:
    """In its own process: prepare, train with a per-epoch wall clock, test; write one JSON file."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from common import load_or_prepare

    from shopformer.config import Config
    from shopformer.data.batches import EventArrays
    from shopformer.data.corpus import make_split
    from shopformer.data.options import IngestOptions
    from shopformer.evaluation.ranking import evaluate, model_scorer
    from shopformer.pipelines.next_item import train_next_item

    tag = suffix(args.batch_size, args.untied, args.epochs, args.norm)
    done = Path(args.out_json).parent / f"shopformer_concurrent{tag}.json"
    if done.exists() and Path(args.out_json) != done:  # already run beside RecBole (--concurrent): reuse it
        Path(args.out_json).write_text(done.read_text())
        return
    torch.set_num_threads(args.threads)
    sampler = LoadSampler().__enter__()
    t0 = time.perf_counter()
    opts = IngestOptions(format="sequences") if args.input_format == "lines" else IngestOptions(format="csv")
    ds = load_or_prepare(Path(args.input), opts)
    cfg = Config().override(
        model={"name": "sasrec", "dim": MODEL["dim"], "layers": MODEL["layers"], "heads": MODEL["heads"],
               "dropout": MODEL["dropout"], "emb_dropout": MODEL["dropout"], "max_len": MODEL["max_len"],
               "tie_output": not args.untied, "norm": args.norm},
        train={"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": 0.002,
               "schedule": "cosine", "warmup_steps": 20, "patience": 10, "seed": args.seed,
               "threads": args.threads, "max_minutes": args.budget_s / 60},
        eval={"exclude_seen": False, "bootstrap": 200})
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    prep_s = time.perf_counter() - t0
    curve: list[dict] = []
    start, cpu0 = time.perf_counter(), time.process_time()

    def on_epoch(epoch: int, row: dict) -> None:
        curve.append({"epoch": epoch, "wall_s": round(time.perf_counter() - start, 2),
                      "cpu_s": round(time.process_time() - cpu0, 2),
                      "valid_ndcg@10": row.get("valid_ndcg@10"), "epoch_s": round(row["epoch_seconds"], 2)})
        print(json.dumps(curve[-1]), flush=True)

    trained = train_next_item(ds, cfg, split, arrays, on_epoch=on_epoch, progress=True)
    fit_s = time.perf_counter() - start
    t1 = time.perf_counter()
    test = evaluate(model_scorer(trained.model), ds.seq, arrays, split.test, ds.spec.n_items, cfg.model.max_len,
                    cfg.eval).metrics
    res = {
        "tool": "shopformer", "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "dataset": {"test_users": len(split.test), "valid_users": len(split.valid), "items": ds.spec.n_items},
        "config": cfg.model_dump(mode="json"),
        "test": {k: round(float(test[k]), 5) for k in (*METRICS, "mrr")},
        "test_ci95": {k: [round(float(x), 5) for x in test["ci95"][k]] for k in ("hr@10", "ndcg@10")},
        "best_valid_ndcg@10": round(float(trained.valid["ndcg@10"]), 5),
        "best_epoch": trained.fit.best_epoch, "epochs_run": trained.fit.epochs, "stopped_by": trained.fit.stopped_by,
        "fit_wall_s": round(fit_s, 2), "train_wall_s": round(trained.fit.train_seconds, 2),
        "test_wall_s": round(time.perf_counter() - t1, 2), "prep_s": round(prep_s, 2), "curve": curve,
        "budget_s": args.budget_s, "command": " ".join([sys.executable, *sys.argv]),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    sampler.__exit__()
    res["load"] = sampler.summary()
    Path(args.out_json).write_text(json.dumps(res) + "\n")


# ------------------------------------------------------------------------------------------ report


def time_to(curve: list[dict], target: float, key: str = "wall_s") -> float | None:
    """Seconds (``key``: wall_s or cpu_s) of the first validation at or above ``target`` (None: never)."""
    return next((c[key] for c in curve if c["valid_ndcg@10"] is not None and c["valid_ndcg@10"] >= target), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def report(rb: dict, sf: dict, meta: dict, png: Path) -> dict:
    best = max(rb["valid_scores"])
    t_rb, t_sf = time_to(rb["curve"], best), time_to(sf["curve"], best)
    c_rb, c_sf = time_to(rb["curve"], best, "cpu_s"), time_to(sf["curve"], best, "cpu_s")
    cpu_ratio = ratio(c_sf, c_rb)
    rb_test = {k: rb["test"][k.upper()] for k in METRICS}
    time_ratio = ratio(t_sf, t_rb)
    rss_ratio = round(sf["peak_rss_mb"] / rb["peak_rss_mb"], 4)
    out = {
        **meta,
        "recbole_best_valid_ndcg@10": best,
        "time_to_recbole_best_s": {"recbole": t_rb, "shopformer": t_sf},
        "time_ratio_shopformer_over_recbole": time_ratio,
        "peak_rss_mb": {"recbole": rb["peak_rss_mb"], "shopformer": sf["peak_rss_mb"]},
        "rss_ratio_shopformer_over_recbole": rss_ratio,
        "time_to_recbole_best_cpu_s": {"recbole": c_rb, "shopformer": c_sf},
        "cpu_time_ratio_shopformer_over_recbole": cpu_ratio,
        "targets": {"time_ratio<=0.2": time_ratio is not None and time_ratio <= 0.2,
                    "cpu_time_ratio<=0.2": cpu_ratio is not None and cpu_ratio <= 0.2,
                    "rss_ratio<=0.5": rss_ratio <= 0.5},
        # when shopformer's plateau is below RecBole's best, the time ratio above is undefined: this one is not
        "time_to_common_level_s": common_level(rb["curve"], sf["curve"]),
        "test_at_equal_wall": {
            "note": "each system's best-on-validation model, trained for at most the same wall time (shopformer's "
                    "budget = RecBole's training wall time); seen items NOT removed for either",
            "recbole": {**rb_test, "fit_wall_s": rb["fit_wall_s"], "epochs": rb["epochs_run"],
                        "best_epoch": rb["best_epoch"], "stopped_by": rb["stopped_by"]},
            "shopformer": {**sf["test"], "ci95": sf["test_ci95"], "fit_wall_s": sf["fit_wall_s"],
                           "epochs": sf["epochs_run"], "best_epoch": sf["best_epoch"], "stopped_by": sf["stopped_by"]},
        },
        "best_valid_ndcg@10": {"recbole": best, "shopformer": sf["best_valid_ndcg@10"]},
        "prep_s": {"recbole": rb["data_prep_s"], "shopformer": sf["prep_s"]},
        "sec_per_epoch": {"recbole": rb["sec_per_epoch"],
                          "shopformer": round(sf["train_wall_s"] / max(sf["epochs_run"], 1), 2)},
        "threads": {"recbole": rb["torch_threads"], "shopformer": sf["torch_threads"]},
        "load": {"recbole": rb["load"], "shopformer": sf["load"]},
        "dataset": {"recbole": rb["dataset"], "shopformer": sf["dataset"]},
        "curves": {"recbole": rb["curve"], "shopformer": sf["curve"]},
        "commands": {"recbole": rb["command"], "shopformer": sf["command"]},
        "figure": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
    }
    plot(rb["curve"], sf["curve"], best, png, meta["command"])
    return out


def common_level(rb: list[dict], sf: list[dict]) -> dict:
    """Wall and CPU seconds each system needs to reach the lower of the two best validation NDCG@10 (a level
    both reached), and shopformer's share of RecBole's."""
    level = min(max(c["valid_ndcg@10"] or 0.0 for c in curve) for curve in (rb, sf))
    wall = {"recbole": time_to(rb, level), "shopformer": time_to(sf, level)}
    cpu = {"recbole": time_to(rb, level, "cpu_s"), "shopformer": time_to(sf, level, "cpu_s")}
    return {"level": level, "wall_s": wall, "cpu_s": cpu, "wall_ratio": ratio(wall["shopformer"], wall["recbole"]),
            "cpu_ratio": ratio(cpu["shopformer"], cpu["recbole"])}


def plot(rb: list[dict], sf: list[dict], best: float, png: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(ROOT / "bench"))
    from common import stamp_png

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "wall_s", "training wall time (min; epochs + validation)"),
                           (axes[1], "cpu_s", "training CPU time of the process (min)")):
        for name, curve, style in (("RecBole SASRec", rb, "o-"), ("shopformer SASRec", sf, "s-")):
            pts = [(c[key] / 60, c["valid_ndcg@10"]) for c in curve if c.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, label=name)
        ax.axhline(best, color="grey", ls=":", lw=1, label=f"RecBole best {best:.4f}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation NDCG@10 (full ranking, seen items kept)")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    stamp_png(png, command)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SOURCES), default="beauty")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both systems")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--recbole-max-epochs", type=int, default=15)
    ap.add_argument("--recbole-patience", type=int, default=10)
    ap.add_argument("--recbole-budget-s", type=float, default=2700.0, help="RecBole starts no epoch after this")
    ap.add_argument("--shopformer-epochs", type=int, default=60, help="schedule length (cosine); patience 10")
    ap.add_argument("--shopformer-batch-size", type=int, default=MODEL["batch_size"],
                    help="sequences per step; RecBole's batch counts prefixes (one target each), shopformer's "
                         "sequences (a target at every position), so 32 gives about as many targets per step "
                         "on Beauty (~7 per training sequence) as RecBole's 256")
    ap.add_argument("--shopformer-untied", action="store_true",
                    help="model.tie_output = false: with seen items kept, a tied model ranks the newest event "
                         "first (bench/seen_items.py)")
    ap.add_argument("--shopformer-norm", choices=["pre", "post", "ligr"], default="ligr",
                    help="shopformer's blocks: ligr (gated, configs/default.toml's) or pre-LN (RecBole's "
                         "is post-LN; results before stop 24 used pre)")
    ap.add_argument("--concurrent", action="store_true",
                    help="run the shopformer stage at the same time as RecBole (one process each, --threads "
                         "each), its budget --shopformer-budget-s or else --recbole-budget-s")
    ap.add_argument("--shopformer-budget-s", type=float, default=None,
                    help="cap shopformer's wall budget below RecBole's training wall time (a shared machine)")
    ap.add_argument("--max-users", type=int, default=None, help="taobao-pv: first N users only")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--reuse-recbole", action="store_true", help="report with the RecBole stage already in --work")
    ap.add_argument("--report-only", action="store_true",
                    help="only the report, from the stage files in --work (shopformer_concurrent.json if present)")
    # internal: the shopformer stage, run in its own process
    ap.add_argument("--stage", choices=["shopformer"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input-format", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget-s", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--out-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=MODEL["batch_size"], help=argparse.SUPPRESS)
    ap.add_argument("--untied", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--norm", default="pre", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage == "shopformer":
        shopformer_stage(args)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from common import command_line

    command = command_line(__file__, argv)
    work = args.work or WORK / args.data
    work.mkdir(parents=True, exist_ok=True)
    env = ensure_venv(args.venv)
    path, fmt, note = input_file(args.data, work, args.max_users)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    order = "RecBole first, then shopformer (sequential, same machine)"
    tag = suffix(args.shopformer_batch_size, args.shopformer_untied, args.shopformer_epochs, args.shopformer_norm)
    concurrent, sequential = work / f"shopformer_concurrent{tag}.json", work / f"shopformer{tag}.json"
    together = ("concurrently: the shopformer stage ran while RecBole ran, 1 process each with --threads threads, "
                "at the same moment on the same machine (load recorded)")
    proc = None
    if args.concurrent and not (args.reuse_recbole or args.report_only):
        budget = args.shopformer_budget_s or args.recbole_budget_s
        proc, order = start_shopformer_stage(args, path, fmt, concurrent, budget_s=budget), together
    if args.reuse_recbole or args.report_only:
        rb = json.loads((work / "recbole_stage.json").read_text())
    else:
        rb = run_recbole(args, args.venv, path, fmt, work)
        (work / "recbole_stage.json").write_text(json.dumps(rb) + "\n")
    if proc is not None:
        sf = finish_shopformer_stage(proc, concurrent)
    elif args.report_only and concurrent.exists():
        sf = json.loads(concurrent.read_text())
        sf["command"] = sf.get("command") or "see shopformer_concurrent_command"
        order = together
    elif args.report_only:
        if not sequential.exists():
            raise SystemExit(f"--report-only: neither {concurrent} nor {sequential} exists; run the stage first")
        sf = json.loads(sequential.read_text())
    else:
        budget = min(rb["fit_wall_s"], args.shopformer_budget_s or float("inf"))
        with LoadSampler() as load:
            proc = start_shopformer_stage(args, path, fmt, sequential, budget_s=budget)
            proc.wait()
        sf = finish_shopformer_stage(proc, sequential, load)
    meta = {"bench": "peers", "command": command, "data": note, "file": str(path), "started_utc": started,
            "model": {**MODEL, "shopformer_batch_size": args.shopformer_batch_size,
                      "shopformer_tie_output": not args.shopformer_untied, "shopformer_norm": args.shopformer_norm,
                      "loss": "full CE (RecBole: last position of each prefix; shopformer: every position)"},
            "recbole_env": env, "order": order}
    # the figure beside, not under, bench/results (tests/test_bench_scripts.py: figures there are the
    # multi-behaviour report's only)
    res = report(rb, sf, meta, ROOT / "bench" / "figures" / f"peers_{args.data}{tag}.png")
    (RESULTS / f"peers_{args.data}{tag}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("recbole_best_valid_ndcg@10", "time_to_recbole_best_s",
                                          "time_ratio_shopformer_over_recbole", "peak_rss_mb", "targets")}))


if __name__ == "__main__":
    main()
