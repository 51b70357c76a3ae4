"""Shape rules: output shapes of the ops whose shape is computed from a shape tensor, op by op.

Each rule returns one entry per output: a list of dims (an :class:`Expr` or None where
unknown) or None (no own fact: the declared shape stands).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import onnx_graphsurgeon as gs

from fusekit.passes._shapes.expr import Expr
from fusekit.passes._shapes.value_rules import Rule, ShapeT, Value, norm_axis, slice_params, slice_range, value_of_shape

if TYPE_CHECKING:
    from fusekit.passes._shapes.analysis import Analysis

BIG = 2**31 - 1  # a Slice end at least this large means "to the end" of any real dim


def _elems_as_dims(value: Value | None) -> list[Expr | None] | None:
    return None if value is None or value.scalar else list(value.elems)


def reshape_dims(in_shape: ShapeT | None, target: Sequence[Expr | None], allowzero: bool) -> list[Expr | None]:
    """Reshape's output dims: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out: list[Expr | None] = []
    infer = None
    for i, e in enumerate(target):
        if e is not None and e.is_const and e.value == 0 and not allowzero:
            out.append(in_shape[i] if in_shape is not None and i < len(in_shape) else None)
        elif e is not None and e.is_const and e.value == -1:
            infer = i
            out.append(None)
        else:
            out.append(e)
    if infer is not None and in_shape is not None:
        known = [d for i, d in enumerate(out) if i != infer]
        if all(d is not None for d in known):
            total, rest = Expr.const(1), Expr.const(1)
            for d in in_shape:
                total = total * d
            for d in known:
                rest = rest * d
            out[infer] = total.div(rest) if not rest.fresh or not total.fresh else None
    return out


def _s_reshape(a: Analysis, node: gs.Node) -> list:
    target = _elems_as_dims(a.value(node.inputs[1]))
    if target is None:
        return [None]
    return [reshape_dims(a.shape(node.inputs[0]), target, bool(node.attrs.get("allowzero", 0)))]


def _s_expand(a: Analysis, node: gs.Node) -> list:
    target = _elems_as_dims(a.value(node.inputs[1]))
    shape = a.shape(node.inputs[0])
    if target is None or shape is None:
        return [None]
    rank = max(len(target), len(shape))
    out = []
    for axis in range(rank):
        t = target[axis - rank + len(target)] if axis - rank + len(target) >= 0 else Expr.const(1)
        s = shape[axis - rank + len(shape)] if axis - rank + len(shape) >= 0 else Expr.const(1)
        out.append(None if t is None else a.broadcast_dim([s, t]))
    return [out]


def _s_constant_of_shape(a: Analysis, node: gs.Node) -> list:
    return [_elems_as_dims(a.value(node.inputs[0]))]


def _s_range(a: Analysis, node: gs.Node) -> list:
    start, limit, delta = (a.value(t) for t in node.inputs)
    if any(v is None or len(v.elems) != 1 or v.elems[0] is None for v in (start, limit, delta)):
        return [None]
    s, l, d = start.elems[0], limit.elems[0], delta.elems[0]
    if not d.is_const or d.value <= 0:
        return [None]
    span = l - s
    if span.is_const:
        return [[Expr.const(max(-(-span.value // d.value), 0))]]
    if not span.nonneg:
        return [None]
    return [[(span + Expr.const(d.value - 1)).div(d)]]


def _s_tile(a: Analysis, node: gs.Node) -> list:
    shape, repeats = a.shape(node.inputs[0]), _elems_as_dims(a.value(node.inputs[1]))
    if shape is None or repeats is None or len(repeats) != len(shape):
        return [None]
    return [[None if r is None else d * r for d, r in zip(shape, repeats)]]


def _s_shape(a: Analysis, node: gs.Node) -> list:
    value = value_of_shape(a, node)[0]
    return [None if value is None else [Expr.const(len(value.elems))]]


def _s_size(a: Analysis, node: gs.Node) -> list:
    return [[]]


def _s_gather(a: Analysis, node: gs.Node) -> list:
    data, idx = a.shape(node.inputs[0]), a.shape(node.inputs[1])
    if data is None or idx is None:
        return [None]
    axis = norm_axis(node.attrs.get("axis", 0), len(data))
    return [data[:axis] + idx + data[axis + 1:]]


def _s_transpose(a: Analysis, node: gs.Node) -> list:
    shape = a.shape(node.inputs[0])
    if shape is None:
        return [None]
    perm = node.attrs.get("perm", list(range(len(shape)))[::-1])
    return [[shape[p] for p in perm]]


def _s_unsqueeze(a: Analysis, node: gs.Node) -> list:
    shape, axes = a.shape(node.inputs[0]), a.axes(node, 1)
    if shape is None or axes is None:
        return [None]
    rank = len(shape) + len(axes)
    axes = sorted(norm_axis(x, rank) for x in axes)
    out, rest = [], iter(shape)
    for i in range(rank):
        out.append(Expr.const(1) if i in axes else next(rest))
    return [out]


def _s_squeeze(a: Analysis, node: gs.Node) -> list:
    shape, axes = a.shape(node.inputs[0]), a.axes(node, 1)
    if shape is None:
        return [None]
    if axes is None:
        if any(not d.is_const for d in shape):
            return [None]
        return [[d for d in shape if d.value != 1]]
    drop = {norm_axis(x, len(shape)) for x in axes}
    return [[d for i, d in enumerate(shape) if i not in drop]]


def _s_concat(a: Analysis, node: gs.Node) -> list:
    shapes = [a.shape(t) for t in node.inputs]
    if any(s is None for s in shapes) or not shapes:
        return [None]
    rank = len(shapes[0])
    axis = norm_axis(node.attrs["axis"], rank)
    total = Expr.const(0)
    for s in shapes:
        total = total + s[axis]
    out: list[Expr | None] = list(shapes[0])
    for i in range(rank):
        if i != axis:
            out[i] = next((s[i] for s in shapes if not s[i].fresh), shapes[0][i])
    out[axis] = total
    return [out]


def _s_flatten(a: Analysis, node: gs.Node) -> list:
    shape = a.shape(node.inputs[0])
    if shape is None:
        return [None]
    axis = node.attrs.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    outer, inner = Expr.const(1), Expr.const(1)
    for d in shape[:axis]:
        outer = outer * d
    for d in shape[axis:]:
        inner = inner * d
    return [[outer, inner]]


def _s_matmul(a: Analysis, node: gs.Node) -> list:
    x, y = a.shape(node.inputs[0]), a.shape(node.inputs[1])
    if x is None or y is None or not x or not y:
        return [None]
    xs = x if len(x) > 1 else [Expr.const(1)] + x
    ys = y if len(y) > 1 else y + [Expr.const(1)]
    batch = a.broadcast([xs[:-2], ys[:-2]])
    if batch is None:
        return [None]
    out = batch + [xs[-2], ys[-1]]
    if len(x) == 1:
        out.pop(-2)
    if len(y) == 1:
        out.pop(-1)
    return [out]


def _s_slice(a: Analysis, node: gs.Node) -> list:
    shape = a.shape(node.inputs[0])
    if shape is None:
        return [None]
    params = slice_params(a, node, len(shape))
    if params is None:
        return [None]
    out: list[Expr | None] = list(shape)
    for axis, start, end, step in params:
        out[axis] = _sliced_dim(a, shape[axis], start, end, step)
    return [out]


def _sliced_dim(a: Analysis, dim: Expr, start: Expr | None, end: Expr | None, step: int) -> Expr | None:
    if start is None or end is None:
        return None
    if dim.is_const and start.is_const and end.is_const:
        return Expr.const(len(slice_range(start.value, end.value, step, dim.value)))
    if step != 1 or not start.is_const or start.value != 0:
        return None
    if end.is_const and end.value >= BIG:
        return dim
    if end == dim:
        return dim
    if end.nonneg:
        return a.minimum(end, dim)
    return None


def _s_topk(a: Analysis, node: gs.Node) -> list:
    shape, k = a.shape(node.inputs[0]), a.value(node.inputs[1])
    if shape is None or k is None or len(k.elems) != 1:
        return [None]
    out: list[Expr | None] = list(shape)
    out[norm_axis(node.attrs.get("axis", -1), len(shape))] = k.elems[0]
    return [out, out]


def _s_resize(a: Analysis, node: gs.Node) -> list:
    if len(node.inputs) < 4 or not node.inputs[3].name or "axes" in node.attrs:
        return [None]
    return [_elems_as_dims(a.value(node.inputs[3]))]


SHAPE_RULES: dict[str, Rule] = {
    "Reshape": _s_reshape, "Expand": _s_expand, "ConstantOfShape": _s_constant_of_shape, "Range": _s_range,
    "Tile": _s_tile, "Shape": _s_shape, "Size": _s_size, "Gather": _s_gather, "Transpose": _s_transpose,
    "Unsqueeze": _s_unsqueeze, "Squeeze": _s_squeeze, "Concat": _s_concat, "Flatten": _s_flatten,
    "MatMul": _s_matmul, "Slice": _s_slice, "TopK": _s_topk, "Resize": _s_resize,
}
