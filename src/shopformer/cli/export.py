"""``shopformer export RUN --format onnx``: the encoder (history -> user vector) as an ONNX graph.

Writes ``encoder.onnx`` and ``encoder.onnx.json`` (the PyTorch parity check) into the run's model
directory; ``SHOPFORMER_BACKEND=onnx`` (or ``shopformer serve --backend onnx``) then serves with
onnxruntime. Needs the ``onnx`` extra (``pip install 'shopformer[onnx]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import console, fail, model_dir

FORMATS = ("onnx",)


def export_command(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")],
    format: Annotated[str, typer.Option("--format", help="export format (onnx)")] = "onnx",
    dataset: Annotated[Path | None, typer.Option(
        help="prepared data set whose histories check the export (default: the one the run was trained on)")] = None,
    histories: Annotated[int, typer.Option(help="real histories compared with PyTorch")] = 512,
    tolerance: Annotated[float, typer.Option(help="largest max abs difference of a user vector accepted")] = 1e-4,
) -> None:
    """Export the run's encoder (history -> user vector), checked against PyTorch on real histories."""
    if format not in FORMATS:
        fail(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    try:
        import onnxruntime  # noqa: F401 - a clear message before minutes of work
    except ImportError:
        fail("--format onnx needs onnx and onnxruntime: pip install 'shopformer[onnx]'")
    from shopformer.artifacts import ArtifactError
    from shopformer.onnx_encoder import CHECK_FILE, ENCODER_FILE, OnnxExportError
    from shopformer.pipelines.export_onnx import export_onnx

    target = model_dir(run)
    try:
        record = export_onnx(target, dataset, histories, tolerance=tolerance)
    except (OnnxExportError, ArtifactError, ValueError, OSError) as err:
        fail(err)
    check = record["check"]
    console.print(f"wrote {target / ENCODER_FILE} and {target / CHECK_FILE}: {record['model']} encoder, "
                  f"max abs diff vs PyTorch {check['max_abs_diff']:.2e} on {check['histories']} histories "
                  f"(tolerance {check['tolerance']:g}), exported in {record['export_seconds']} s", highlight=False)
