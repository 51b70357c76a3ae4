"""Value rules: the values of small integer tensors (shape tensors), op by op.

Each rule reads the analysis's facts for a node's inputs and returns one entry per output:
a :class:`Value` or None (not tracked). Also the Slice helpers the shape rules share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array
from fusekit.passes._shapes.expr import Expr, maximum, relation

if TYPE_CHECKING:
    from fusekit.passes._shapes.analysis import Analysis

MAX_ELEMENTS = 64  # TensorRT caps shape tensors at 64 elements


@dataclass(frozen=True)
class Value:
    """The value of a small integer tensor: each element an Expr, or None (runtime data)."""

    elems: tuple[Expr | None, ...]
    scalar: bool
    dtype: np.dtype

    @property
    def constant(self) -> bool:
        return all(e is not None and e.is_const for e in self.elems)

    def array(self) -> np.ndarray:
        data = np.array([e.value for e in self.elems], dtype=self.dtype)
        return data.reshape(()) if self.scalar else data


ShapeT = list[Expr]
Rule = Callable[["Analysis", gs.Node], list]


def is_int(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype).kind in "iu"
    except TypeError:
        return False


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _out_dtype(node: gs.Node, default=None) -> np.dtype | None:
    t = node.outputs[0].dtype
    if is_int(t) or (t is not None and np.dtype(t) == np.bool_):
        return np.dtype(t)
    return default


def value_of_shape(a: Analysis, node: gs.Node) -> list:
    shape = a.shape(node.inputs[0])
    if shape is None:
        return [None]
    rank = len(shape)
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    dims = shape[start:end]
    if len(dims) > MAX_ELEMENTS:
        return [None]
    return [Value(tuple(dims), False, np.dtype(np.int64))]


def _v_size(a: Analysis, node: gs.Node) -> list:
    shape = a.shape(node.inputs[0])
    if shape is None:
        return [None]
    total = Expr.const(1)
    for d in shape:
        total = total * d
    return [Value((total,), True, np.dtype(np.int64))]


def _v_identity(a: Analysis, node: gs.Node) -> list:
    return [a.value(node.inputs[0])]


def _v_cast(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    dtype = _out_dtype(node)
    if v is None or dtype is None or dtype == np.bool_ or v.dtype == np.bool_:
        return [None]
    if np.dtype(dtype).itemsize < min(v.dtype.itemsize, 4) and not v.constant:
        return [None]  # narrowing below 32 bits could wrap (dims fit in int32, TensorRT's limit)
    return [Value(v.elems, v.scalar, np.dtype(dtype))]


def _v_gather(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    idx = a.value(node.inputs[1])
    if v is None or v.scalar or idx is None or not idx.constant or node.attrs.get("axis", 0) not in (0, -1):
        return [None]
    n = len(v.elems)
    picked = []
    for e in idx.elems:
        i = e.value + n if e.value < 0 else e.value
        if not 0 <= i < n:
            return [None]
        picked.append(v.elems[i])
    return [Value(tuple(picked), idx.scalar, v.dtype)]


def slice_params(a: Analysis, node: gs.Node, rank: int):
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        inputs = list(node.inputs) + [None] * 5
        starts, ends = a.value(inputs[1]), a.value(inputs[2])
        if starts is None or ends is None:
            return None
        axes_v = a.ints(inputs[3]) if inputs[3] is not None and inputs[3].name else list(range(len(starts.elems)))
        steps_v = a.ints(inputs[4]) if inputs[4] is not None and inputs[4].name else [1] * len(starts.elems)
        if axes_v is None or steps_v is None:
            return None
        starts, ends, axes, steps = list(starts.elems), list(ends.elems), axes_v, steps_v
    starts = [Expr.const(s) if isinstance(s, int) else s for s in starts]
    ends = [Expr.const(e) if isinstance(e, int) else e for e in ends]
    return [(norm_axis(ax, rank), s, e, st) for ax, s, e, st in zip(axes, starts, ends, steps)]


def slice_range(start: int, end: int, step: int, n: int) -> range:
    """ONNX Slice's clamping on a dim of constant size ``n``."""
    if step == 0:
        raise ValueError("slice step 0")
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return range(start, end, step)


def _v_slice(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    if v is None or v.scalar:
        return [None]
    params = slice_params(a, node, 1)
    if params is None or len(params) != 1:
        return [None]
    _, start, end, step = params[0]
    if start is None or end is None or not start.is_const or not end.is_const:
        return [None]
    picked = [v.elems[i] for i in slice_range(start.value, end.value, step, len(v.elems))]
    return [Value(tuple(picked), False, v.dtype)]


def _v_concat(a: Analysis, node: gs.Node) -> list:
    values = [a.value(t) for t in node.inputs]
    if any(v is None or v.scalar for v in values) or not values:
        return [None]
    elems = tuple(e for v in values for e in v.elems)
    if len(elems) > MAX_ELEMENTS:
        return [None]
    return [Value(elems, False, values[0].dtype)]


def _v_unsqueeze(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    axes = a.axes(node, 1)
    if v is None or not v.scalar or axes not in ([0], [-1]):
        return [None]
    return [Value(v.elems, False, v.dtype)]  # scalar -> [x]


def _v_squeeze(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    axes = a.axes(node, 1)
    if v is None or v.scalar or len(v.elems) != 1 or (axes is not None and axes not in ([0], [-1])):
        return [None]
    return [Value(v.elems, True, v.dtype)]


def _v_reshape(a: Analysis, node: gs.Node) -> list:
    v = a.value(node.inputs[0])
    target = a.ints(node.inputs[1])
    if v is None or target is None or len(target) > 1:
        return [None]
    if target and target[0] not in (-1, len(v.elems)) and not (target[0] == 0 and not v.scalar):
        return [None]
    if not target and len(v.elems) != 1:
        return [None]
    return [Value(v.elems, not target, v.dtype)]


def _elementwise(a: Analysis, node: gs.Node, fn: Callable[..., Expr | None], dtype=None) -> list:
    values = [a.value(t) for t in node.inputs]
    if not values or any(v is None for v in values):
        return [None]
    lengths = {len(v.elems) for v in values if not v.scalar}
    if len(lengths - {1}) > 1:
        return [None]
    n = max(lengths - {1}, default=1 if lengths else 1)
    scalar = all(v.scalar for v in values)
    elems = []
    for i in range(n):
        args = [v.elems[0] if len(v.elems) == 1 else v.elems[i] for v in values]
        elems.append(None if any(x is None for x in args) else fn(*args))
    out_dtype = dtype if dtype is not None else values[0].dtype
    return [Value(tuple(elems), scalar, np.dtype(out_dtype))]


def _arith(fn: Callable[..., Expr | None]) -> Rule:
    def rule(a: Analysis, node: gs.Node) -> list:
        if any(v is not None and v.dtype == np.bool_ for v in (a.value(t) for t in node.inputs)):
            return [None]
        return _elementwise(a, node, fn)
    return rule


def _mod(a: Analysis, node: gs.Node) -> list:
    if node.attrs.get("fmod", 0):
        return [None]
    return _elementwise(a, node, lambda x, y: x.mod(y))


def _reduce_many(fn: Callable[[Expr, Expr], Expr | None]) -> Callable[..., Expr | None]:
    def apply(*args: Expr) -> Expr | None:
        result: Expr | None = args[0]
        for x in args[1:]:
            result = None if result is None else fn(result, x)
        return result
    return apply


def _v_min(a: Analysis, node: gs.Node) -> list:
    return _arith(_reduce_many(a.minimum))(a, node)


def _compare(op: str) -> Rule:
    def rule(a: Analysis, node: gs.Node) -> list:
        def decide(x: Expr, y: Expr) -> Expr | None:
            known = relation(x, y)
            return None if op not in known else Expr.const(int(known[op]))
        return _elementwise(a, node, decide, dtype=np.bool_)
    return rule


def _v_not(a: Analysis, node: gs.Node) -> list:
    return _elementwise(a, node, lambda x: Expr.const(1 - x.value) if x.is_const else None, dtype=np.bool_)


def _logic(fn: Callable[[int, int], int]) -> Rule:
    def rule(a: Analysis, node: gs.Node) -> list:
        return _elementwise(a, node, lambda x, y: Expr.const(fn(x.value, y.value))
                            if x.is_const and y.is_const else None, dtype=np.bool_)
    return rule


def _v_where(a: Analysis, node: gs.Node) -> list:
    values = [a.value(t) for t in node.inputs]
    if any(v is None for v in values):
        return [None]

    def pick(c: Expr, x: Expr, y: Expr) -> Expr | None:
        if c.is_const:
            return x if c.value else y
        return x if x == y else None

    out = _elementwise(a, node, pick)
    if out[0] is not None:
        return [Value(out[0].elems, out[0].scalar, values[1].dtype)]
    return out


def _v_constant_of_shape(a: Analysis, node: gs.Node) -> list:
    shape = a.ints(node.inputs[0])
    fill = node.attrs.get("value")
    array = constant_array(fill) if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
    if shape is None or array is None or array.dtype.kind not in "iu" or len(shape) > 1:
        return [None]
    size = shape[0] if shape else 1
    if size > MAX_ELEMENTS:
        return [None]
    return [Value((Expr.const(array.reshape(-1)[0]),) * size, not shape, array.dtype)]


def _v_range(a: Analysis, node: gs.Node) -> list:
    args = [a.ints(t) for t in node.inputs]
    if any(v is None or len(v) != 1 for v in args):
        return [None]
    (start,), (limit,), (delta,) = args
    if delta == 0:
        return [None]
    values = list(range(start, limit, delta))
    if len(values) > MAX_ELEMENTS:
        return [None]
    return [Value(tuple(Expr.const(v) for v in values), False, a.value(node.inputs[0]).dtype)]


def _v_reduce(fn: Callable[[Expr, Expr], Expr | None], identity: int) -> Rule:
    def rule(a: Analysis, node: gs.Node) -> list:
        v = a.value(node.inputs[0])
        axes = a.axes(node, 1)
        if v is None or (axes is not None and axes not in ([], [0], [-1])) or any(e is None for e in v.elems):
            return [None]
        if axes == [] and node.attrs.get("noop_with_empty_axes", 0):
            return [v]
        total: Expr | None = Expr.const(identity)
        for e in v.elems:
            total = None if total is None else fn(total, e)
        if total is None:
            return [None]
        return [Value((total,), not node.attrs.get("keepdims", 1) or v.scalar, v.dtype)]
    return rule


VALUE_RULES: dict[str, Rule] = {
    "Shape": value_of_shape, "Size": _v_size, "Identity": _v_identity, "Cast": _v_cast, "Gather": _v_gather,
    "Slice": _v_slice, "Concat": _v_concat, "Unsqueeze": _v_unsqueeze, "Squeeze": _v_squeeze,
    "Reshape": _v_reshape, "Add": _arith(lambda x, y: x + y), "Sub": _arith(lambda x, y: x - y),
    "Mul": _arith(lambda x, y: x * y), "Div": _arith(lambda x, y: x.div(y)), "Mod": _mod,
    "Neg": _arith(lambda x: -x), "Abs": _arith(lambda x: x if x.nonneg else (-x if (-x).nonneg else None)),
    "Min": _v_min, "Max": _arith(_reduce_many(maximum)),
    "Equal": _compare("=="), "Less": _compare("<"), "LessOrEqual": _compare("<="), "Greater": _compare(">"),
    "GreaterOrEqual": _compare(">="), "Not": _v_not, "And": _logic(lambda x, y: int(bool(x and y))),
    "Or": _logic(lambda x, y: int(bool(x or y))), "Where": _v_where, "ConstantOfShape": _v_constant_of_shape,
    "Range": _v_range, "ReduceProd": _v_reduce(lambda x, y: x * y, 1), "ReduceSum": _v_reduce(lambda x, y: x + y, 0),
}
