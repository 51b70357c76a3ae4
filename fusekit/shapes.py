"""Shape facts for passes: ONNX shape inference onto the graph, and input shape overrides."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type

from fusekit.errors import InputError
from fusekit.model_io import export_weightless

log = logging.getLogger(__name__)

Dim = int | str | None


def annotate_shapes(graph: gs.Graph, shell: onnx.ModelProto | None = None) -> int:
    """Run ONNX shape inference (weightless) and store dtypes/shapes on the graph's tensors.

    Graph inputs are left as declared. Returns how many tensors gained information.
    """
    light = export_weightless(graph, shell or onnx.ModelProto())
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is advisory here; the final check is strict
        log.debug("shape inference failed: %s", exc)
        return 0
    tensors = graph.tensors()
    inputs = {id(t) for t in graph.inputs}
    gained = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = tensors.get(vi.name)
        if tensor is None or isinstance(tensor, gs.Constant) or id(tensor) in inputs:
            continue
        dtype, shape = _type_of(vi)
        if dtype is not None and tensor.dtype is None:
            tensor.dtype = dtype
            gained += 1
        if shape is not None and _more_specific(shape, tensor.shape):
            tensor.shape = shape
            gained += 1
    return gained


def _type_of(vi: onnx.ValueInfoProto):
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    dtype = gs_dtype(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dtype, None
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return dtype, shape


def gs_dtype(elem_type: int):
    """An ONNX element type as onnx-graphsurgeon holds it: a NumPy dtype, or the ONNX enum
    itself for types it has no NumPy type for (bfloat16, float8). ml_dtypes types are not
    used: onnx-graphsurgeon exports some of them as the wrong ONNX type."""
    dtype = get_numpy_type(elem_type)
    return elem_type if dtype is None else dtype


def _more_specific(new: Sequence[Dim], old: Sequence[Dim] | None) -> bool:
    if old is None:
        return True
    if len(new) != len(old):
        return False
    return sum(isinstance(d, int) for d in new) > sum(isinstance(d, int) for d in old)


def parse_shape(text: str) -> tuple[str, list[Dim]]:
    """``NAME:1x3x224x224`` (a dim may be a name, e.g. ``batchx3x224x224``) -> (NAME, dims)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise InputError(f"--input-shape {text!r}: expected NAME:DxDxD, e.g. images:1x3x640x640")
    return name, [int(d) if d.isdigit() else d for d in dims.split("x")]


def apply_input_shapes(graph: gs.Graph, shapes: Mapping[str, Sequence[Dim]]) -> None:
    """Override graph input shapes; refuse unknown inputs, wrong ranks and changed static dims."""
    inputs = {t.name: t for t in graph.inputs}
    for name, dims in shapes.items():
        tensor = inputs.get(name)
        if tensor is None:
            raise InputError(f"input shape for {name!r}: the model has no such input "
                             f"(inputs: {', '.join(inputs) or 'none'})")
        dims = list(dims)
        if tensor.shape is not None:
            if len(tensor.shape) != len(dims):
                raise InputError(f"input shape for {name!r}: rank {len(dims)} given, the model "
                                 f"declares rank {len(tensor.shape)} {_fmt(tensor.shape)}")
            for axis, (old, new) in enumerate(zip(tensor.shape, dims)):
                if isinstance(old, int) and old >= 0 and old != new:
                    raise InputError(f"input shape for {name!r}: axis {axis} is fixed at {old} in the "
                                     f"model, {new} given ({_fmt(tensor.shape)})")
        tensor.shape = dims


def _fmt(shape: Sequence[Dim]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)
