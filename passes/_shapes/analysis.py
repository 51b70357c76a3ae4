"""The sweep: shapes and shape values of every tensor, declared facts merged with computed ones."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, constant_of, is_constant
from fusekit.onnx_nodes import is_default_domain
from fusekit.passes._shapes.expr import FRESH, Expr, Minima, broadcast_dim, minimum, parse_dim_param
from fusekit.passes._shapes.shape_rules import SHAPE_RULES
from fusekit.passes._shapes.value_rules import MAX_ELEMENTS, VALUE_RULES, ShapeT, Value, is_int

_INT_KINDS = "iub"
_SAME_SHAPE = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
    "Cosh", "CumSum", "DequantizeLinear", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization",
    "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Mish", "Neg", "Not", "QuantizeLinear", "Reciprocal",
    "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
    "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Trilu", "BatchNormalization", "LRN", "MeanVarianceNormalization",
    "BitwiseNot",
})
_BROADCAST = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "PRelu", "Pow", "Sub",
    "Sum", "Where", "Xor",
})


class Analysis:
    """Shapes and shape values of every tensor of ``graph`` (one sweep; nothing changed)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.shapes: dict[int, ShapeT | None] = {}
        self.values: dict[int, Value] = {}
        self.why: dict[int, str] = {}  # why (part of) an integer tensor's value is runtime data
        self.subst: dict[str, Expr] = {}
        self.input_names = {d for t in graph.inputs for d in (t.shape or []) if isinstance(d, str)}
        self.minima: Minima = {}  # what the min(...) names made in this run stand for
        self._fresh = 0
        for node in graph.nodes:
            self._visit(node)

    # -- lookups --------------------------------------------------------------------
    def shape(self, tensor: gs.Tensor) -> ShapeT | None:
        """The tensor's shape (dims are Exprs; unknown dims are fresh names), or None."""
        key = id(tensor)
        if key not in self.shapes:
            self.shapes[key] = self._declared(tensor, fill=True)
        return self.shapes[key]

    def value(self, tensor: gs.Tensor | None) -> Value | None:
        """The value of a small integer tensor (elements may be None), or None if untracked."""
        if tensor is None or not tensor.name:
            return None
        key = id(tensor)
        if key in self.values:
            return self.values[key]
        value = None
        if is_constant(tensor):
            shape = _constant_shape(tensor)  # from metadata: a weight is not read to size it
            if len(shape) <= 1 and math.prod(shape) <= MAX_ELEMENTS:
                array = constant_array(tensor)
                if array is not None and array.dtype.kind in _INT_KINDS:
                    value = Value(tuple(Expr.const(v) for v in array.reshape(-1).tolist()), array.ndim == 0,
                                  array.dtype)
        elif is_int(tensor.dtype):
            shape = self.shape(tensor)
            if shape is not None and len(shape) <= 1 and all(d.is_const for d in shape):
                size = shape[0].value if shape else 1
                if size <= MAX_ELEMENTS:
                    value = Value((None,) * size, not shape, np.dtype(tensor.dtype))
                    self.why.setdefault(key, _describe_source(tensor))
        if value is not None:
            self.values[key] = value
        return value

    def final(self, e: Expr) -> Expr:
        """``e`` with every substitution learnt by the end of the sweep applied."""
        return e.substitute(self.subst)

    def unknown_reason(self, tensor: gs.Tensor) -> str:
        return self.why.get(id(tensor), _describe_source(tensor))

    # -- the sweep ------------------------------------------------------------------
    def _fresh_dim(self) -> Expr:
        self._fresh += 1
        return Expr.atom(f"{FRESH}{self._fresh}")

    def dim(self, d) -> Expr | None:
        """A declared dim as an Expr: ints >= 0 as constants, names (substituted), else None."""
        if isinstance(d, (int, np.integer)):
            return Expr.const(int(d)) if d >= 0 else None
        if isinstance(d, str) and d:
            if d in self.subst:
                return self.subst[d]
            return Expr.atom(d) if d in self.input_names else parse_dim_param(d)
        return None

    def _declared(self, tensor: gs.Tensor, fill: bool) -> list[Expr | None] | None:
        if is_constant(tensor):
            return [Expr.const(d) for d in _constant_shape(tensor)]
        shape = tensor.shape
        if shape is None:
            return None
        dims = [self.dim(d) for d in shape]
        return [d if d is not None or not fill else self._fresh_dim() for d in dims]

    def _visit(self, node: gs.Node) -> None:
        supported = is_default_domain(node) and not any(isinstance(v, gs.Graph) for v in node.attrs.values())
        own_shapes: list = []
        own_values: list = []
        if supported:
            try:
                own_values = VALUE_RULES[node.op](self, node) if node.op in VALUE_RULES else []
                own_shapes = self._own_shapes(node)
            except (ValueError, IndexError, KeyError, TypeError, OverflowError):  # malformed node: no facts
                own_shapes, own_values = [], []
        for i, out in enumerate(node.outputs):
            own = own_shapes[i] if i < len(own_shapes) else None
            self.shapes[id(out)] = self._merge(out, own)
            value = own_values[i] if i < len(own_values) else None
            if value is not None:
                self.values[id(out)] = value
                if any(e is None for e in value.elems):
                    self.why.setdefault(id(out), self._first_reason(node))
            elif is_int(out.dtype):
                self.why[id(out)] = self._first_reason(node) if supported and node.op in VALUE_RULES \
                    else _describe_source(out)

    def _first_reason(self, node: gs.Node) -> str:
        for t in node.inputs:
            if id(t) in self.why:
                return self.why[id(t)]
        return f"{node.op} {node.name!r}"

    def _own_shapes(self, node: gs.Node) -> list:
        if node.op in _SAME_SHAPE:
            if node.op == "Dropout" and len(node.outputs) > 1:
                s = self.shape(node.inputs[0])
                return [s, s]
            return [self.shape(node.inputs[0])]
        if node.op in _BROADCAST:
            return [self.broadcast([self.shape(t) for t in node.inputs if t.name])]
        rule = SHAPE_RULES.get(node.op)
        return rule(self, node) if rule else []

    def _merge(self, tensor: gs.Tensor, own: list[Expr | None] | None) -> ShapeT | None:
        declared = self._declared(tensor, fill=False)
        if own is None:
            return None if declared is None else [d if d is not None else self._fresh_dim() for d in declared]
        if declared is None or len(declared) != len(own):
            return [d if d is not None else self._fresh_dim() for d in own]
        merged = []
        for d, w in zip(declared, own):
            if w is None or w.fresh:
                merged.append(d if d is not None else (w or self._fresh_dim()))
            elif d is None or d == w or w.is_const:
                merged.append(w)
            elif d.is_const and d.value > 0:
                merged.append(d)  # a declared static dim stays static
            elif d.name() is not None and d.name() in self.input_names:
                merged.append(d)
            else:
                name = d.name()
                if name is not None and not name.startswith(FRESH):
                    self.subst[name] = w  # one dim, one name, everywhere
                merged.append(w)
        return merged

    # -- shape helpers --------------------------------------------------------------
    def broadcast(self, shapes: Sequence[ShapeT | None]) -> list[Expr | None] | None:
        if any(s is None for s in shapes):
            return None
        rank = max((len(s) for s in shapes), default=0)
        out: list[Expr | None] = []
        for axis in range(rank):
            dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
            out.append(self.broadcast_dim(dims))
        return out

    def broadcast_dim(self, dims: Sequence[Expr]) -> Expr | None:
        return broadcast_dim(dims, self.minima)

    def minimum(self, x: Expr, y: Expr) -> Expr | None:
        return minimum(x, y, self.minima)

    def ints(self, tensor: gs.Tensor | None) -> list[int] | None:
        """A constant integer vector/scalar input as Python ints, else None."""
        value = self.value(tensor)
        if value is None or not value.constant:
            return None
        return [e.value for e in value.elems]

    def axes(self, node: gs.Node, input_index: int) -> list[int] | None:
        if "axes" in node.attrs:
            return [int(a) for a in node.attrs["axes"]]
        if len(node.inputs) > input_index and node.inputs[input_index].name:
            return self.ints(node.inputs[input_index])
        return None


def _constant_shape(tensor: gs.Tensor) -> tuple[int, ...]:
    return tuple(constant_of(tensor).shape)


def _describe_source(tensor: gs.Tensor) -> str:
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None:
        return f"graph input {tensor.name!r}" if not isinstance(tensor, gs.Constant) else f"constant {tensor.name!r}"
    return f"{node.op} {node.name!r}"
