"""Check a model with ``onnx.checker`` and strict shape inference, and infer its shapes.

Both work on a weightless export of the graph (large constants replaced by stubs), so
they cost no memory for weights and work on models of any size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from fusekit.errors import InputError
from fusekit.model_io import WEIGHTLESS_PLACEHOLDER, export_weightless


def check_graph(graph: gs.Graph, shell: onnx.ModelProto, what: str,
                error: type[Exception] = InputError) -> None:
    """Raise ``error`` naming ``what`` if the graph fails the checker or strict shape inference."""
    try:
        light = export_weightless(graph, shell)
    except ValueError as exc:  # e.g. an attribute whose type onnx-graphsurgeon lost (a mistyped list)
        raise error(f"{what}: cannot be written back as ONNX: {first_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="fusekit-check-") as tmp:
        Path(tmp, WEIGHTLESS_PLACEHOLDER).touch()
        path = Path(tmp, "model.onnx")
        path.write_bytes(light.SerializeToString())
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise error(f"{what}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (ONNX errors span many lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
