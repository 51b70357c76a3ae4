"""Symbolic shapes and shape values: the analysis behind symbolic-shapes and fold-shapes.

Not a pass; it reads the graph and changes nothing. One sweep over the nodes in
topological order computes, for every tensor,

- its shape, each dim an :class:`Expr`: a polynomial with integer coefficients over
  named dims (``batch``, ``seq``: every named dim is a size, so >= 0), e.g.
  ``4*batch*seq``. A result that is no polynomial (``seq // 3``, ``min(seq, 512)``)
  is an opaque name of its own, made only when it is provably >= 0;
- for small integer tensors (rank 0 or 1, at most :data:`MAX_ELEMENTS` elements: the
  values TensorRT calls shape tensors) its value, element by element, as an
  :class:`Expr`, or ``None`` where the element depends on runtime data.

Shapes come from the graph's declared/inferred shapes (ONNX inference, see
``infer-shapes``) merged with the analysis's own rules for the ops whose output
shape is computed from a shape tensor (Reshape with 0 and -1, Expand,
ConstantOfShape, Range, Tile, Slice...). When a declared dim is a name ONNX made up
(``unk__3``) or an unknown, and the analysis knows better, the name is substituted
everywhere (:attr:`Analysis.subst`), so one dim has one name across the graph.
Names used by graph inputs are facts and never substituted.

Semantics follow ONNX/onnxruntime: integer Div truncates, Mod (fmod=0) takes the
divisor's sign, Slice clamps, Reshape 0 copies (unless ``allowzero``) and -1 infers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, constant_of, is_constant
from fusekit.passes._fusion import is_default_domain

MAX_ELEMENTS = 64  # TensorRT caps shape tensors at 64 elements
FRESH = "?"  # prefix of the names of unknown dims: never written to the model
INT64_MAX = np.iinfo(np.int64).max
BIG = 2**31 - 1  # a Slice end at least this large means "to the end" of any real dim

Monomial = tuple[str, ...]


class Expr:
    """An integer polynomial over dim names (each >= 0). Immutable and hashable."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int] | Iterable[tuple[Monomial, int]] = ()) -> None:
        items = terms.items() if isinstance(terms, Mapping) else terms
        merged: dict[Monomial, int] = {}
        for mono, coeff in items:
            merged[mono] = merged.get(mono, 0) + int(coeff)
        self.terms: tuple[tuple[Monomial, int], ...] = tuple(sorted((m, c) for m, c in merged.items() if c))

    @staticmethod
    def const(value: int) -> "Expr":
        return Expr({(): int(value)})

    @staticmethod
    def atom(name: str) -> "Expr":
        return Expr({(name,): 1})

    # -- queries --------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return all(not mono for mono, _ in self.terms)

    @property
    def value(self) -> int:
        """The constant (only when ``is_const``)."""
        return sum(c for _, c in self.terms)

    @property
    def nonneg(self) -> bool:
        """Provably >= 0: every coefficient is (every name is a size, so >= 0)."""
        return all(c >= 0 for _, c in self.terms)

    @property
    def atoms(self) -> set[str]:
        return {a for mono, _ in self.terms for a in mono}

    @property
    def fresh(self) -> bool:
        """Mentions an unknown dim: equal to itself only, never written out."""
        return any(a.startswith(FRESH) for a in self.atoms)

    def name(self) -> str | None:
        """The name if this is a single name (``batch``), else None."""
        if len(self.terms) == 1 and len(self.terms[0][0]) == 1 and self.terms[0][1] == 1:
            return self.terms[0][0][0]
        return None

    def render(self) -> int | str | None:
        """As a dim of an ONNX shape: an int, a dim_param (``4*batch*seq``), or None."""
        if self.is_const:
            return self.value
        if self.fresh:
            return None
        return str(self)

    def evaluate(self, env: Mapping[str, int]) -> int:
        """The value when every name has the value in ``env`` (tests)."""
        return sum(c * math.prod(env[a] for a in mono) for mono, c in self.terms)

    # -- arithmetic -----------------------------------------------------------------
    def __add__(self, other: "Expr") -> "Expr":
        return Expr(list(self.terms) + list(other.terms))

    def __neg__(self) -> "Expr":
        return Expr((m, -c) for m, c in self.terms)

    def __sub__(self, other: "Expr") -> "Expr":
        return self + (-other)

    def __mul__(self, other: "Expr") -> "Expr":
        return Expr((tuple(sorted(m1 + m2)), c1 * c2) for m1, c1 in self.terms for m2, c2 in other.terms)

    def div(self, other: "Expr") -> "Expr | None":
        """Integer division as ONNX Div (truncating), or None when unknown."""
        if other.is_const:
            d = other.value
            if d == 0:
                return None
            if self.is_const:
                q = abs(self.value) // abs(d)
                return Expr.const(q if (self.value >= 0) == (d > 0) else -q)
            if all(c % d == 0 for _, c in self.terms):
                return Expr((m, c // d) for m, c in self.terms)
        elif len(other.terms) == 1:  # by a monomial that divides every term exactly
            mono, coeff = other.terms[0]
            quotient = []
            for m, c in self.terms:
                rest = _remove(m, mono)
                if rest is None or c % coeff:
                    break
                quotient.append((rest, c // coeff))
            else:
                return Expr(quotient)
        if self.nonneg and other.nonneg:
            return opaque(f"floor({_paren(self)}/{_paren(other)})")
        return None

    def mod(self, other: "Expr") -> "Expr | None":
        """ONNX Mod with fmod=0 (the result takes the divisor's sign), or None."""
        if other.is_const and other.value != 0:
            d = other.value
            if self.is_const:
                return Expr.const(self.value % d)
            if d > 0 and all(c % d == 0 for _, c in self.terms):
                return Expr.const(0)
            if d > 0 and self.nonneg:
                return opaque(f"{_paren(self)}%{d}")
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        return f"Expr({self})"

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for mono, coeff in sorted(self.terms, key=lambda t: (-len(t[0]), t[0])):
            body = "*".join(mono)
            if not body:
                text = str(abs(coeff))
            elif abs(coeff) == 1:
                text = body
            else:
                text = f"{abs(coeff)}*{body}"
            parts.append(("-" if coeff < 0 else "+") + text)
        out = "".join(parts)
        return out[1:] if out.startswith("+") else out

    def substitute(self, mapping: Mapping[str, "Expr"]) -> "Expr":
        if not mapping or not (self.atoms & mapping.keys()):
            return self
        total = Expr()
        for mono, coeff in self.terms:
            term = Expr.const(coeff)
            for a in mono:
                term = term * mapping.get(a, Expr.atom(a))
            total = total + term
        return total


def _remove(mono: Monomial, divisor: Monomial) -> Monomial | None:
    rest = list(mono)
    for a in divisor:
        if a not in rest:
            return None
        rest.remove(a)
    return tuple(rest)


def _paren(e: Expr) -> str:
    return str(e) if e.name() or e.is_const else f"({e})"


# What the opaque names made by minimum() stand for: name -> (a, b). Names are canonical,
# so the table only ever grows with the same facts.
_MINIMA: dict[str, tuple[Expr, Expr]] = {}


def opaque(text: str) -> Expr:
    """A name standing for a non-polynomial result; only ever made for values >= 0."""
    return Expr.atom(text)


def minimum(a: Expr, b: Expr) -> Expr | None:
    known = relation(a, b)
    if "<=" in known or ">=" in known:
        return a if known.get("<=") or known.get(">=") is False else b
    if a.nonneg and b.nonneg:
        first, second = sorted((str(a), str(b)))
        name = f"min({first},{second})"
        _MINIMA.setdefault(name, (a, b))
        return opaque(name)
    return None


def maximum(a: Expr, b: Expr) -> Expr | None:
    known = relation(a, b)
    if "<=" in known or ">=" in known:
        return a if known.get(">=") or known.get("<=") is False else b
    if a.nonneg or b.nonneg:
        first, second = sorted((str(a), str(b)))
        return opaque(f"max({first},{second})")
    return None


def compare(a: Expr, b: Expr) -> int | None:
    """-1, 0 or 1 if a <, =, > b whatever the dims are; None if that depends on them."""
    d = a - b
    if d.is_const:
        return (d.value > 0) - (d.value < 0)
    constant = sum(c for m, c in d.terms if not m)
    if d.nonneg and constant > 0:
        return 1
    if (-d).nonneg and constant < 0:
        return -1
    return None


def relation(a: Expr, b: Expr) -> dict[str, bool]:
    """Which of ``<``, ``<=``, ``==``, ``>=``, ``>`` are decided for a, b."""
    d = a - b
    order = compare(a, b)
    if order is not None:
        return {"<": order < 0, "<=": order <= 0, "==": order == 0, ">=": order >= 0, ">": order > 0}
    if d.nonneg:  # a >= b, maybe equal
        return {"<": False, ">=": True}
    if (-d).nonneg:
        return {">": False, "<=": True}
    return {}


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
        elif _is_int(tensor.dtype):
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
            return Expr.atom(d) if d in self.input_names else parse_dim(d)
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
                own_values = _VALUE_RULES[node.op](self, node) if node.op in _VALUE_RULES else []
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
            elif _is_int(out.dtype):
                self.why[id(out)] = self._first_reason(node) if supported and node.op in _VALUE_RULES \
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
        rule = _SHAPE_RULES.get(node.op)
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
            out.append(broadcast_dim(dims))
        return out

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


def broadcast_dim(dims: Sequence[Expr]) -> Expr | None:
    """The broadcast of dims (valid models only): 1s drop out, equal dims stay."""
    rest = [d for d in dims if not (d.is_const and d.value == 1)]
    if not rest:
        return Expr.const(1)
    first = rest[0]
    if all(d == first for d in rest):
        return first
    constants = {d.value for d in rest if d.is_const}
    if len(constants) == 1:
        return Expr.const(constants.pop())  # a symbolic dim broadcast against c must be c (or 1)
    distinct = list(dict.fromkeys(rest))
    if len(distinct) == 2:
        for m, x in (distinct, distinct[::-1]):
            pair = _MINIMA.get(m.name() or "")
            if pair is not None and x in pair:
                c = pair[1] if x == pair[0] else pair[0]
                if c.is_const and c.value >= 1:
                    return x  # min(c, x) against x: equal when x <= c; when x > c only c == 1 is valid
    return None


def _constant_shape(tensor: gs.Tensor) -> tuple[int, ...]:
    return tuple(constant_of(tensor).shape)


_TERM = re.compile(r"([+-]?)([^+-]+)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_dim(name: str) -> Expr:
    """A dim_param as an Expr: ``4*batch*seq`` (as :meth:`Expr.render` writes) is read back
    as that polynomial; any other name is a name of its own."""
    if _IDENT.fullmatch(name) or not re.fullmatch(r"[A-Za-z0-9_*+\- ]+", name):
        return Expr.atom(name)
    total = Expr()
    text = name.replace(" ", "")
    if not text or text[-1] in "+-*" or "--" in text or "+-" in text or "-+" in text or "++" in text:
        return Expr.atom(name)
    for sign, body in _TERM.findall(text):
        term = Expr.const(-1 if sign == "-" else 1)
        for factor in body.split("*"):
            if factor.isdigit():
                term = term * Expr.const(int(factor))
            elif _IDENT.fullmatch(factor):
                term = term * Expr.atom(factor)
            else:
                return Expr.atom(name)
        total = total + term
    return total


def _is_int(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype).kind in "iu"
    except TypeError:
        return False


def _describe_source(tensor: gs.Tensor) -> str:
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None:
        return f"graph input {tensor.name!r}" if not isinstance(tensor, gs.Constant) else f"constant {tensor.name!r}"
    return f"{node.op} {node.name!r}"


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# -- values ---------------------------------------------------------------------------

def _out_dtype(node: gs.Node, default=None) -> np.dtype | None:
    t = node.outputs[0].dtype
    if _is_int(t) or (t is not None and np.dtype(t) == np.bool_):
        return np.dtype(t)
    return default


def _v_shape(a: Analysis, node: gs.Node) -> list:
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


def _slice_params(a: Analysis, node: gs.Node, rank: int):
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
    return [(_norm_axis(ax, rank), s, e, st) for ax, s, e, st in zip(axes, starts, ends, steps)]


def _slice_range(start: int, end: int, step: int, n: int) -> range:
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
    params = _slice_params(a, node, 1)
    if params is None or len(params) != 1:
        return [None]
    _, start, end, step = params[0]
    if start is None or end is None or not start.is_const or not end.is_const:
        return [None]
    picked = [v.elems[i] for i in _slice_range(start.value, end.value, step, len(v.elems))]
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


_VALUE_RULES: dict[str, Rule] = {
    "Shape": _v_shape, "Size": _v_size, "Identity": _v_identity, "Cast": _v_cast, "Gather": _v_gather,
    "Slice": _v_slice, "Concat": _v_concat, "Unsqueeze": _v_unsqueeze, "Squeeze": _v_squeeze,
    "Reshape": _v_reshape, "Add": _arith(lambda x, y: x + y), "Sub": _arith(lambda x, y: x - y),
    "Mul": _arith(lambda x, y: x * y), "Div": _arith(lambda x, y: x.div(y)), "Mod": _mod,
    "Neg": _arith(lambda x: -x), "Abs": _arith(lambda x: x if x.nonneg else (-x if (-x).nonneg else None)),
    "Min": _arith(_reduce_many(minimum)), "Max": _arith(_reduce_many(maximum)),
    "Equal": _compare("=="), "Less": _compare("<"), "LessOrEqual": _compare("<="), "Greater": _compare(">"),
    "GreaterOrEqual": _compare(">="), "Not": _v_not, "And": _logic(lambda x, y: int(bool(x and y))),
    "Or": _logic(lambda x, y: int(bool(x or y))), "Where": _v_where, "ConstantOfShape": _v_constant_of_shape,
    "Range": _v_range, "ReduceProd": _v_reduce(lambda x, y: x * y, 1), "ReduceSum": _v_reduce(lambda x, y: x + y, 0),
}


# -- shapes ---------------------------------------------------------------------------

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
        out.append(None if t is None else broadcast_dim([s, t]))
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
    value = _v_shape(a, node)[0]
    return [None if value is None else [Expr.const(len(value.elems))]]


def _s_size(a: Analysis, node: gs.Node) -> list:
    return [[]]


def _s_gather(a: Analysis, node: gs.Node) -> list:
    data, idx = a.shape(node.inputs[0]), a.shape(node.inputs[1])
    if data is None or idx is None:
        return [None]
    axis = _norm_axis(node.attrs.get("axis", 0), len(data))
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
    axes = sorted(_norm_axis(x, rank) for x in axes)
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
    drop = {_norm_axis(x, len(shape)) for x in axes}
    return [[d for i, d in enumerate(shape) if i not in drop]]


def _s_concat(a: Analysis, node: gs.Node) -> list:
    shapes = [a.shape(t) for t in node.inputs]
    if any(s is None for s in shapes) or not shapes:
        return [None]
    rank = len(shapes[0])
    axis = _norm_axis(node.attrs["axis"], rank)
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
    params = _slice_params(a, node, len(shape))
    if params is None:
        return [None]
    out: list[Expr | None] = list(shape)
    for axis, start, end, step in params:
        out[axis] = _sliced_dim(shape[axis], start, end, step)
    return [out]


def _sliced_dim(dim: Expr, start: Expr | None, end: Expr | None, step: int) -> Expr | None:
    if start is None or end is None:
        return None
    if dim.is_const and start.is_const and end.is_const:
        return Expr.const(len(_slice_range(start.value, end.value, step, dim.value)))
    if step != 1 or not start.is_const or start.value != 0:
        return None
    if end.is_const and end.value >= BIG:
        return dim
    if end == dim:
        return dim
    if end.nonneg:
        return minimum(end, dim)
    return None


def _s_topk(a: Analysis, node: gs.Node) -> list:
    shape, k = a.shape(node.inputs[0]), a.value(node.inputs[1])
    if shape is None or k is None or len(k.elems) != 1:
        return [None]
    out: list[Expr | None] = list(shape)
    out[_norm_axis(node.attrs.get("axis", -1), len(shape))] = k.elems[0]
    return [out, out]


def _s_resize(a: Analysis, node: gs.Node) -> list:
    if len(node.inputs) < 4 or not node.inputs[3].name or "axes" in node.attrs:
        return [None]
    return [_elems_as_dims(a.value(node.inputs[3]))]


_SHAPE_RULES: dict[str, Rule] = {
    "Reshape": _s_reshape, "Expand": _s_expand, "ConstantOfShape": _s_constant_of_shape, "Range": _s_range,
    "Tile": _s_tile, "Shape": _s_shape, "Size": _s_size, "Gather": _s_gather, "Transpose": _s_transpose,
    "Unsqueeze": _s_unsqueeze, "Squeeze": _s_squeeze, "Concat": _s_concat, "Flatten": _s_flatten,
    "MatMul": _s_matmul, "Slice": _s_slice, "TopK": _s_topk, "Resize": _s_resize,
}
