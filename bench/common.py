"""Shared helpers of the benchmarks: measurement, provenance of result lines, dataset preparation.

Every result line a benchmark prints carries ``"bench"`` (the script's name) and ``"command"`` (the
command line that produced it, :func:`provenance`); every table or figure written under
bench/results/ states the command that regenerates it (:func:`stamp_png` for figures).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from shopformer.artifacts import Run, load_run
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "out" / "bench_data"


def load_or_prepare(raw: Path, options: IngestOptions, cache: Path = CACHE) -> Dataset:
    """A prepared dataset for ``raw`` (prepared once into ``cache``, keyed by the file's hash)."""
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:12]
    out = cache / f"{raw.stem}-{digest}"
    if not (out / "stats.json").exists():
        prepare([raw], out, options, overwrite=True)
    return load_dataset(out)


def saved_run(run_dir: Path) -> tuple[Run, Dataset]:
    """A run written by ``shopformer train`` (its folder or its ``model/`` folder) and the dataset it names."""
    run = load_run(run_dir / "model" if (run_dir / "model").is_dir() else run_dir)
    return run, load_dataset(run.manifest["dataset_dir"])


def rel(path: Path | str) -> str:
    """``path`` relative to the repository root when it is inside it, else as given."""
    p = Path(path)
    q = p.resolve()
    return str(q.relative_to(ROOT)) if q.is_relative_to(ROOT) else str(p)


def command_line(script: str | Path, argv: list[str] | None = None) -> str:
    """The command that runs ``script`` with ``argv`` (default: this process's arguments), from the
    repository root: ``.venv/bin/python bench/zoo.py --quick ...`` (shell-quoted)."""
    exe = Path(os.path.abspath(sys.executable))  # the venv's link, not the interpreter it points to
    python = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([python, rel(script), *args])


def provenance(script: str | Path, argv: list[str] | None = None) -> dict[str, str]:
    """``{"bench": <script name>, "command": <command line>}``: the keys every result line carries."""
    return {"bench": Path(script).stem, "command": command_line(script, argv)}


def stamp_png(path: Path, text: str, dpi: int = 110) -> None:
    """Write ``text`` (the command that regenerates the figure) in a band above the image in ``path``
    (pixels kept 1:1) and in the PNG's metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = plt.imread(path)
    h, w = img.shape[:2]
    band = 22
    fig = plt.figure(figsize=(w / dpi, (h + band) / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, h / (h + band)))
    ax.imshow(img, interpolation="none")
    ax.set_axis_off()
    size = min(7.0, 0.95 * w / dpi * 72 / (0.6 * max(len(text), 1)))  # monospace: ~0.6 em per character
    fig.text(0.5, 1 - band / 2 / (h + band), text, ha="center", va="center", fontsize=size, family="monospace",
             color="dimgrey")
    fig.savefig(path, dpi=dpi, metadata={"Description": f"regenerate: {text}"})
    plt.close(fig)


def skip_if_missing(path: Path, bench: str) -> None:
    if not path.exists():
        print(json.dumps({"bench": bench, "command": command_line(ROOT / "bench" / f"{bench}.py"),
                          "skipped": f"{path} not found (needs ../shared/data)"}))
        sys.exit(0)


def matmul_gflops(n: int = 1024, repeat: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
