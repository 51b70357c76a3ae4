"""Which nodes an fp16/bf16 conversion keeps in FP32, and why.

A node "touches" float32 when one of its inputs or outputs is a float32 tensor; only those
are decided. Each rule returns a reason (kept) or None (converted):

- by the user: ``keep_float`` names a node or an op type;
- by the spec: the ONNX schema at the model's opset has no fp16/bf16 for one of the
  node's float slots that follows the data (an input-only slot such as Resize's ``scales``
  just stays float32: :func:`spec_verdict` reports it as pinned);
- by op: ops whose result leaves the target's range or precision for ordinary inputs
  (Exp, Log, Pow with an exponent above 1, Reciprocal, Sqrt, LogSoftmax; sums and
  InstanceNormalization over axes longer than :data:`LONG_AXIS`; Div by a constant below
  the target's smallest normal; TopK, whose order and picked indices change with fp16
  ties; the coordinate path into NonMaxSuppression's boxes and RoiAlign's rois);
- by weights: a constant input with finite values beyond the target's range, or whose
  non-zero values all flush to zero in it;
- by data: an input or output whose observed magnitude (``--data``) exceeds the
  target's range or lies wholly below its smallest normal (as ModelOpt AutoCast does).

Not kept, measured: Softmax (attention's, fused by TensorRT with the MatMuls around it;
Casts around it cost engine layers and, on the tiny encoder, bought no accuracy: see
the README), LayerNormalization (converted with ``stash_type`` = 1, so its mean and
variance are computed in FP32), ReduceMean/ReduceMax/GlobalAveragePool (bounded by their
inputs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, onnx_type, producer, static_shape

FLOAT = onnx.TensorProto.FLOAT
LONG_AXIS = 1024  # a sum of this many values of magnitude 64 already overflows fp16


@dataclass(frozen=True)
class Target:
    """A reduced float type: its name, ONNX enum and schema type string, NumPy type, range."""

    name: str
    onnx_type: int
    type_str: str  # as ONNX schemas write it, e.g. "tensor(float16)"
    numpy_type: type
    max: float  # largest finite value
    smallest_normal: float
    smallest: float  # smallest positive (subnormal) value


def _target(name: str, enum: int, type_str: str, numpy_type) -> Target:
    info = ml_dtypes.finfo(numpy_type)
    return Target(name, enum, type_str, numpy_type, float(info.max), float(info.smallest_normal),
                  float(info.smallest_subnormal))


TARGETS = {"fp16": _target("fp16", onnx.TensorProto.FLOAT16, "tensor(float16)", np.float16),
           "bf16": _target("bf16", onnx.TensorProto.BFLOAT16, "tensor(bfloat16)", ml_dtypes.bfloat16)}

# Nodes whose float output type comes from an attribute, not from a float input: they
# follow their consumers (converted when those want the target type).
FLEXIBLE_OPS = frozenset({"Cast", "Constant", "ConstantOfShape"})
# Ops whose output type is an attribute and that onnxruntime has no fp16 CPU kernel for: it
# cannot Cast around them as it does for other ops, so the model would not load there.
# Kept FP32; a Cast after them feeds the converted region (TensorRT folds it).
ATTRIBUTE_TYPED_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                 "EyeLike", "Bernoulli"})
# Input 0 of these is read whatever its type: it never needs a Cast.
ANY_TYPE_INPUT_OPS = frozenset({"Cast", "CastLike", "Shape", "Size", "EyeLike", "RandomNormalLike",
                                "RandomUniformLike"})
ALWAYS_KEPT = {
    "Exp": "Exp overflows the target type for inputs above ~11",
    "Log": "Log of small values: their magnitude underflows the target type",
    "Reciprocal": "Reciprocal of small values overflows the target type",
    "Sqrt": "Sqrt of a variance or sum of squares: small inputs lose their precision",
    "LogSoftmax": "LogSoftmax: the log of small probabilities underflows the target type",
    "TopK": "TopK: ties in the target type change the order and the indices picked",
}
SUM_OPS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                     "ReduceLogSumExp", "ReduceProd", "CumSum"})
# Ops a box coordinate passes through on its way into NonMaxSuppression or RoiAlign.
COORDINATE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Concat", "Slice", "Gather", "GatherElements",
                            "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Split", "Clip", "Min", "Max",
                            "Exp", "Sigmoid", "Identity", "Expand", "Tile"})
COORDINATE_SINKS = {"NonMaxSuppression": (0,), "RoiAlign": (1,), "GridSample": (1,)}
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def is_float32(tensor: gs.Tensor) -> bool:
    return bool(tensor.name) and onnx_type(tensor.dtype) == FLOAT


def touches_float32(node: gs.Node) -> bool:
    return any(is_float32(t) for t in (*node.inputs, *node.outputs))


@dataclass
class SpecVerdict:
    """What the ONNX schema allows: a reason to keep the node, or the inputs to keep float32."""

    reason: str | None = None
    pinned_inputs: frozenset[int] = field(default_factory=frozenset)


@functools.cache
def _schema(op: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None


def spec_verdict(node: gs.Node, target: Target, opset: int) -> SpecVerdict:
    """Keep ``node`` when a float32 slot that follows the data has no ``target`` type at
    ``opset``; input-only slots without it (Resize's scales) are pinned to float32."""
    schema = _schema(node.op, opset)
    if schema is None:
        return SpecVerdict(f"no ONNX schema for {node.op} at opset {opset}")
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    output_types = {p.type_str for p in schema.outputs}
    pinned, allowed, first = set(), 0, None
    for kind, tensors, formals in (("input", node.inputs, schema.inputs), ("output", node.outputs, schema.outputs)):
        for i, tensor in enumerate(tensors):
            if not formals or not is_float32(tensor):
                continue
            formal = formals[min(i, len(formals) - 1)]
            if target.type_str in constraints.get(formal.type_str, {formal.type_str}):
                allowed += 1
                continue
            why = f"ONNX opset {opset} has no {target.name} for {node.op} {kind} {formal.name!r}"
            if kind == "input" and formal.type_str not in output_types:
                pinned.add(i)
                first = first or why
                continue
            return SpecVerdict(why)
    if pinned and not allowed:  # nothing of the node would change type: it is kept
        return SpecVerdict(first)
    return SpecVerdict(None, frozenset(pinned))


def op_reason(node: gs.Node, target: Target) -> str | None:
    """Why ``node``'s op keeps it in FP32 for ordinary inputs, or None."""
    if node.op in ALWAYS_KEPT:
        return ALWAYS_KEPT[node.op]
    if node.op in ATTRIBUTE_TYPED_OPS:
        return (f"{node.op}'s output type is an attribute and onnxruntime has no {target.name} CPU kernel for it "
                "(the model would not load there); its result is Cast")
    if node.op == "Pow":
        exponent = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if exponent is None or float(np.max(exponent)) > 1:
            return "Pow with an exponent above 1 (or not constant) overflows the target type"
    if node.op == "Div":
        divisor = constant_array(node.inputs[1])
        if divisor is not None and divisor.size and float(np.min(np.abs(divisor))) < target.smallest_normal:
            return f"Div by a constant below {target.name}'s smallest normal value"
    if node.op in SUM_OPS or node.op == "InstanceNormalization":
        length = _reduced_length(node)
        if length is None or length > LONG_AXIS:
            what = "of unknown length" if length is None else f"of {length} elements"
            return f"{node.op} accumulates over an axis {what} (> {LONG_AXIS}): FP32 accumulation"
    return None


def _reduced_length(node: gs.Node) -> int | None:
    shape = static_shape(node.inputs[0]) if node.inputs else None
    if shape is None:
        return None
    if node.op == "InstanceNormalization":
        return math.prod(shape[2:])
    if node.op == "CumSum":
        axis = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        return None if axis is None else shape[int(np.asarray(axis).reshape(-1)[0])]
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant_array(node.inputs[1])
        if axes is None:
            return None
    if axes is None or not len(np.asarray(axes).reshape(-1)):
        return math.prod(shape)
    return math.prod(shape[int(a)] for a in np.asarray(axes).reshape(-1))


def coordinate_path(graph: gs.Graph) -> dict[int, str]:
    """Nodes (by id) that compute the coordinates NonMaxSuppression (boxes), RoiAlign (rois)
    or GridSample (grid) read, walking back through :data:`COORDINATE_OPS` from those
    inputs; RoiAlign and GridSample themselves too (they share one type between data and
    coordinates; NonMaxSuppression has no fp16 at all)."""
    found: dict[int, str] = {}
    for sink in graph.nodes:
        for index in COORDINATE_SINKS.get(sink.op, ()):
            if index >= len(sink.inputs):
                continue
            if sink.op != "NonMaxSuppression":
                found[id(sink)] = (f"{sink.op} reads coordinates ({sink.inputs[index].name!r}): fp16 has "
                                   "a resolution of 0.5 at 1024")
            why = f"on the coordinate path into {sink.op} {sink.name!r}"
            stack = [producer(sink.inputs[index])]
            while stack:
                node = stack.pop()
                if node is None or id(node) in found or node.op not in COORDINATE_OPS:
                    continue
                found[id(node)] = why
                stack.extend(producer(t) for t in node.inputs if is_float32(t))
    return found


def weight_reason(node: gs.Node, target: Target) -> str | None:
    """Why a constant float32 input keeps ``node`` in FP32, or None."""
    for tensor in node.inputs:
        if not is_float32(tensor):
            continue
        values = constant_array(tensor)
        if values is None or not values.size:
            continue
        largest = _largest_finite_magnitude(values)
        if largest > target.max:
            return f"constant {tensor.name!r} holds {largest:.3g}, beyond {target.name}'s range"
        if 0 < largest < target.smallest:
            return f"constant {tensor.name!r} ({largest:.3g}) would be 0 in {target.name}"
    return None


def _largest_finite_magnitude(values: np.ndarray) -> float:
    """max |v| over the finite values, in two reductions and no temporary array when all
    are finite (the common case: weights are read once more, not copied)."""
    largest = max(-float(values.min()), float(values.max()))
    if math.isfinite(largest):
        return largest
    magnitude = np.abs(values[np.isfinite(values)])
    return float(magnitude.max()) if magnitude.size else 0.0


def data_reason(node: gs.Node, target: Target, ranges: Mapping[str, object]) -> str | None:
    """Why the observed magnitude of an input or output keeps ``node`` in FP32, or None."""
    for kind, tensors in (("input", node.inputs), ("output", node.outputs)):
        for tensor in tensors:
            seen = ranges.get(tensor.name) if is_float32(tensor) else None
            if seen is None:
                continue
            if seen.max_abs > target.max:
                return f"{kind} {tensor.name!r} reached {seen.max_abs:.3g} on the data, beyond {target.name}'s range"
            if 0 < seen.max_abs < target.smallest_normal:
                return (f"{kind} {tensor.name!r} peaked at {seen.max_abs:.3g} on the data, under "
                        f"{target.name}'s smallest normal value")
    return None


def user_reason(node: gs.Node, keep: frozenset[str]) -> str | None:
    if node.name in keep:
        return "--keep-float names this node"
    if node.op in keep:
        return f"--keep-float names the op {node.op}"
    return None
