"""The user encoder (history -> user vector) as an ONNX graph, and an onnxruntime runner for it.

Export (``export_encoder``) goes through ``torch.onnx.export`` (the ``torch.export``-based exporter)
with dynamic batch and length axes: the graph takes the same left-padded int64 ``(B, L)`` windows as
``SequenceModel.last_hidden`` (items, behaviours, gap buckets, categories; ``L <= max_len``) and
returns the ``(B, D)`` float32 user vectors. Before anything is written, the graph is run with
onnxruntime on the batches given (real histories: ``pipelines/export_onnx.py``) and compared with
PyTorch; a max abs difference above the tolerance refuses the export.

Two files land beside the run's weights, each written atomically:

- ``encoder.onnx`` -- the graph with its weights;
- ``encoder.onnx.json`` -- the check (max abs difference, shapes, tolerance), the SHA-256 of the graph
  and of the ``model.safetensors`` it was exported from, and the library versions.

``OnnxEncoder.load`` refuses a graph whose hash or whose weights hash does not match (an export of an
older model, or a file changed since), so a stale graph is never served. onnx / onnxruntime come with
the ``onnx`` extra and are imported only here, when used.

Not every registered model exports: the RNN baselines (``gru4rec``, ``lstm``) pack each row to its
own length (``pack_padded_sequence``), a data-dependent shape that ``torch.export`` cannot trace.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shopformer.artifacts import WEIGHTS, ArtifactError, Run
from shopformer.atomic import atomic_write, atomic_write_text, sha256_file
from shopformer.data.batches import Batch
from shopformer.models.base import SequenceModel

ENCODER_FILE = "encoder.onnx"
CHECK_FILE = "encoder.onnx.json"
INPUTS = ("items", "behaviours", "gaps", "categories")
OUTPUT = "user_vector"
TOLERANCE = 1e-4  # max abs difference of a user vector, ONNX vs PyTorch (float32 throughout)
MAX_BATCH = 1 << 16  # upper bound of the dynamic batch axis (a bound torch.export wants; no cost)


class OnnxExportError(RuntimeError):
    """The encoder could not be exported, or the exported graph disagrees with PyTorch."""


class OnnxBackendError(ArtifactError):
    """No usable encoder.onnx beside a run (missing, stale or corrupted)."""


class _Encoder(nn.Module):
    """``last_hidden`` of a model, with the four window tensors as separate inputs."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, behaviours: torch.Tensor, gaps: torch.Tensor,
                categories: torch.Tensor) -> torch.Tensor:
        return self.model.last_hidden(Batch(items, behaviours, gaps, categories)).float()


@dataclass(frozen=True)
class ParityCheck:
    """ONNX vs PyTorch on some batches: the largest absolute difference of any user vector entry."""

    max_abs_diff: float
    vectors: int  # user vectors compared (a history checked in two batch shapes counts twice)
    shapes: list[tuple[int, int]]  # (batch, length) of each batch checked

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": tolerance, "passed": self.max_abs_diff <= tolerance,
                "vectors": self.vectors, "batch_shapes": [list(s) for s in self.shapes]}


def _feeds(batch: Batch, names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.ascontiguousarray(getattr(batch, n).numpy(), dtype=np.int64) for n in names}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(session: Any, model: SequenceModel, batches: list[Batch]) -> ParityCheck:
    """Run ``batches`` through the graph and through PyTorch; the max abs difference of the vectors."""
    names = [i.name for i in session.get_inputs()]
    worst, n = 0.0, 0
    with torch.inference_mode():
        for b in batches:
            ref = model.last_hidden(b).float().numpy()
            got = session.run(None, _feeds(b, names))[0]
            if got.shape != ref.shape:
                raise OnnxExportError(f"the exported graph returned shape {got.shape}, PyTorch {ref.shape}")
            worst = max(worst, float(np.abs(got - ref).max()) if got.size else 0.0)
            n += len(b.items)
    return ParityCheck(worst, n, [tuple(b.items.shape) for b in batches])  # type: ignore[misc]


def _export_program(model: SequenceModel) -> Any:
    """``torch.onnx.export`` of the model's encoder, dynamic batch and length (1..max_len)."""
    wrapper = _Encoder(model).eval()
    # Example sizes must be >= 2 (torch.export specialises axes of size 0 / 1); values need only be valid ids.
    length = max(2, min(3, model.max_len))
    example = tuple(torch.ones(2, length, dtype=torch.long) for _ in INPUTS)
    batch_dim = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    length_dim = torch.export.Dim("length", min=1, max=model.max_len)
    shapes = tuple({0: batch_dim, 1: length_dim} for _ in INPUTS)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notes
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes are not the user's
            return torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=shapes, input_names=list(INPUTS),
                                     output_names=[OUTPUT], verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one clear line
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise OnnxExportError(f"model {model.name!r}: torch.onnx could not export its encoder "
                              f"({type(err).__name__}: {first})") from None
    finally:
        quiet.setLevel(level)
        model.eval()  # the exporter may restore a training flag on the wrapper's children


def export_encoder(run: Run, batches: list[Batch], tolerance: float = TOLERANCE, threads: int = 1,
                   histories: int | None = None) -> dict[str, Any]:
    """Export ``run``'s encoder to ``run.path / encoder.onnx`` after checking it on ``batches``
    (``histories``: how many distinct histories they hold, for the record).

    Returns the record written to ``encoder.onnx.json``. Raises OnnxExportError (nothing written,
    any previous export left as it was) when the exporter fails or the difference exceeds ``tolerance``."""
    if not batches:
        raise OnnxExportError("no histories to check the exported graph on")
    import onnx
    import onnxruntime

    model = run.model.eval()
    t0 = time.perf_counter()
    program = _export_program(model)
    export_s = time.perf_counter() - t0
    record: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        program.save(str(tmp))
        check = check_parity(_session(tmp, threads), model, batches)
        if check.max_abs_diff > tolerance:
            raise OnnxExportError(f"the exported graph differs from PyTorch by {check.max_abs_diff:.3g} "
                                  f"(tolerance {tolerance:g}) on {check.vectors} user vectors; nothing written")
        record.update(
            format="onnx", file=ENCODER_FILE, sha256=sha256_file(tmp), model=model.name,
            model_version=run.version, weights_sha256=sha256_file(run.path / WEIGHTS), inputs=list(INPUTS),
            output=OUTPUT, dim=int(model.cfg.dim), max_len=model.max_len,
            check={"histories": histories if histories is not None else check.vectors, **check.to_dict(tolerance)},
            export_seconds=round(export_s, 2), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        )

    atomic_write(run.path / ENCODER_FILE, write)
    atomic_write_text(run.path / CHECK_FILE, json.dumps(record, indent=2) + "\n")
    return record


class OnnxEncoder:
    """History windows -> user vectors with onnxruntime (thread-safe; ``run`` releases the GIL)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = path
        self.session = _session(path, threads)
        self.names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def load(cls, run: Run, threads: int = 1) -> OnnxEncoder:
        """The encoder exported from exactly these weights (OnnxBackendError otherwise)."""
        path, check = run.path / ENCODER_FILE, run.path / CHECK_FILE
        hint = f"run `shopformer export {run.path} --format onnx`"
        if not path.exists() or not check.exists():
            raise OnnxBackendError(f"{run.path}: no {ENCODER_FILE} with its {CHECK_FILE}; {hint}")
        try:
            record = json.loads(check.read_text())
            expected, weights = str(record["sha256"]), str(record["weights_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OnnxBackendError(f"{check}: unreadable export record ({err}); {hint}") from None
        if sha256_file(run.path / WEIGHTS) != weights:
            raise OnnxBackendError(f"{path}: exported from other weights than {run.path / WEIGHTS} (stale); {hint}")
        if sha256_file(path) != expected:
            raise OnnxBackendError(f"{path}: checksum mismatch (corrupted or modified after export); {hint}")
        if not record.get("check", {}).get("passed", False):
            raise OnnxBackendError(f"{check}: the export did not pass its PyTorch parity check; {hint}")
        try:
            return cls(path, threads)
        except Exception as err:  # noqa: BLE001 - onnxruntime's own errors: one clear line
            raise OnnxBackendError(f"{path}: onnxruntime cannot load it ({type(err).__name__}: {err})") from None

    def __call__(self, batch: Batch) -> torch.Tensor:
        """(B, L) windows -> (B, D) float32 user vectors."""
        return torch.from_numpy(self.session.run(None, _feeds(batch, self.names))[0])
