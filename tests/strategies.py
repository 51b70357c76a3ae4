"""Hypothesis strategies: random *valid* ONNX graphs that exercise the cleanup passes.

A graph is built step by step from one or two float32 inputs with a dynamic batch dim
``N`` (opset 17). Every step reads values already in the graph and tracks the shapes it
makes, so the declared graph outputs are exact. Steps mix real computation
(elementwise ops, Conv, MatMul, reshapes and transposes that move data) with everything
the cleanup passes look for: Identity chains, inference Dropout, Mul-by-1 / Add-0 (and
near misses that broadcast), same-shape Reshape/Expand, identity Transpose, same-type
Cast, one-input Concat, zero Pad, constant subgraphs, duplicated nodes and dead
branches (values no output reads), and constant shifts/scales that cancel (must not merge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BATCH = "N"
Shape = tuple  # of ints and BATCH


@dataclass
class Value:
    name: str
    shape: Shape
    constant: bool  # computed from constants alone
    initializer: bool = False
    dtype: int = TensorProto.FLOAT


@dataclass
class Builder:
    """The graph under construction; ``draw`` is hypothesis's."""

    draw: Callable
    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    values: list = field(default_factory=list)
    other_outputs: list = field(default_factory=list)  # non-float values that may be graph outputs
    count: int = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def pick(self, where: Callable[[Value], bool] = lambda v: True, *, computed: bool = False) -> Value | None:
        """A value from the graph (by preference a recent one); ``computed``: not constant."""
        choices = [v for v in self.values if where(v) and not (computed and v.constant)]
        if not choices:
            return None
        index = self.draw(st.integers(0, len(choices) - 1))
        # Bias towards recent values, so graphs are deep rather than wide.
        return choices[len(choices) - 1 - index] if self.draw(st.booleans()) else choices[index]

    def node(self, op: str, inputs: list, shapes: list[Shape], constant: bool, **attrs) -> list[Value]:
        outs = [Value(self.fresh(op.lower() + "_"), s, constant) for s in shapes]
        self.nodes.append(helper.make_node(op, [v if isinstance(v, str) else v.name for v in inputs],
                                           [o.name for o in outs], name=self.fresh(op + "_n"), **attrs))
        self.values.extend(outs)
        return outs

    def constant(self, array: np.ndarray, prefix: str = "c", *, keep: bool = True) -> Value:
        """An initializer or a ``Constant`` node (drawn) holding ``array``."""
        name = self.fresh(prefix)
        as_node = self.draw(st.booleans())
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_n"),
                                               value=numpy_helper.from_array(array, name)))
        else:
            self.initializers.append(numpy_helper.from_array(array, name))
        value = Value(name, tuple(array.shape), True, initializer=not as_node)
        if keep and array.dtype == np.float32:
            self.values.append(value)
        return value

    def floats(self, shape: Shape, low: float = -2.0, high: float = 2.0) -> np.ndarray:
        """Values on a 1/4 grid: exact in float32, so folded and unfolded sums agree."""
        return (np.round(self.rng.uniform(low, high, size=shape) * 4) / 4).astype(np.float32)


def static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def broadcast(a: Shape, b: Shape) -> Shape:
    rank = max(len(a), len(b))
    a, b = (1,) * (rank - len(a)) + tuple(a), (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(f"{a} and {b} do not broadcast")
    return tuple(out)


def compatible_shape(b: Builder, shape: Shape) -> Shape:
    """A constant shape that broadcasts to ``shape`` without growing it."""
    rank = b.draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - rank:]
    return tuple(d if isinstance(d, int) and b.draw(st.booleans()) else 1 for d in tail)


def growing_shape(b: Builder, shape: Shape) -> Shape | None:
    """A constant shape that makes ``shape`` larger when broadcast against it."""
    ones = [i for i, d in enumerate(shape) if d == 1]
    if ones and b.draw(st.booleans()):
        grown = [1] * len(shape)
        grown[b.draw(st.sampled_from(ones))] = 2
        return tuple(grown)
    return (2,) + (1,) * len(shape) if len(shape) < 4 else None


# ---------------------------------------------------------------- steps

def unary(b: Builder) -> None:
    v = b.pick()
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "Neg", "Tanh", "Abs"]))
    b.node(op, [v], [v.shape], v.constant)


def binary_values(b: Builder) -> None:
    v = b.pick()
    w = b.pick(lambda u: u.shape == v.shape)
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub"]))
    b.node(op, [v, w], [v.shape], v.constant and w.constant)


def binary_constant(b: Builder) -> None:
    v = b.pick(computed=True)
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub", "Div"]))
    shape = compatible_shape(b, v.shape)
    values = b.floats(shape, 0.5, 2.0) if op == "Div" else b.floats(shape)
    c = b.constant(values)
    first = op in ("Add", "Mul", "Sub") and b.draw(st.booleans())
    b.node(op, [c, v] if first else [v, c], [broadcast(v.shape, shape)], False)


def neutral(b: Builder) -> None:
    """x * 1, x / 1, x + 0, x - 0; sometimes the near misses 0 - x or a broadcasting 1."""
    v = b.pick(computed=True)
    op = b.draw(st.sampled_from(["Mul", "Div", "Add", "Sub"]))
    shape = compatible_shape(b, v.shape)
    if b.draw(st.integers(0, 3)) == 0:
        shape = growing_shape(b, v.shape) or shape
    c = b.constant(np.full(shape, 1.0 if op in ("Mul", "Div") else 0.0, np.float32), "neutral")
    first = op in ("Mul", "Add") or (op == "Sub" and b.draw(st.booleans()))
    first = first and b.draw(st.booleans())
    b.node(op, [c, v] if first else [v, c], [broadcast(v.shape, shape)], False)


def identity_chain(b: Builder) -> None:
    v = b.pick()
    for _ in range(b.draw(st.integers(1, 3))):
        (v,) = b.node("Identity", [v], [v.shape], v.constant)


def dropout(b: Builder) -> None:
    v = b.pick(computed=True)
    inputs = [v]
    if b.draw(st.booleans()):
        inputs.append(b.constant(np.array(b.draw(st.sampled_from([0.0, 0.1, 0.5])), np.float32), "ratio",
                                 keep=False))
        if b.draw(st.booleans()):
            inputs.append(b.constant(np.array(False), "training", keep=False))
    mask = b.draw(st.sampled_from(["none", "unused", "used"]))
    if mask == "none":
        b.node("Dropout", inputs, [v.shape], False)
        return
    out, m = b.node("Dropout", inputs, [v.shape, v.shape], False)
    b.values.remove(m)  # a bool: not a float value other steps could read
    m.dtype = TensorProto.BOOL
    b.other_outputs.append(m)
    if mask == "used":
        (mf,) = b.node("Cast", [m], [v.shape], False, to=TensorProto.FLOAT)
        b.node("Add", [out, mf], [v.shape], False)


def reshape_same(b: Builder) -> None:
    v = b.pick(lambda u: len(u.shape) >= 1)
    target = [0 if d == BATCH or b.draw(st.booleans()) else d for d in v.shape]
    if b.draw(st.booleans()):
        target[b.draw(st.integers(0, len(target) - 1))] = -1
    if static(v.shape) and 0 in v.shape:
        return
    b.node("Reshape", [v, b.constant(np.array(target, np.int64), "shape", keep=False)], [v.shape], v.constant)


def reshape_real(b: Builder) -> None:
    """Flatten the dims after the first, or split a static last dim in two."""
    v = b.pick(lambda u: len(u.shape) >= 2 and static(u.shape[1:]))
    if v is None:
        return
    last = v.shape[-1]
    splits = [d for d in range(2, last) if last % d == 0]
    if len(v.shape) >= 3 and (not splits or b.draw(st.booleans())):
        target, shape = [0, -1], (v.shape[0], int(np.prod(v.shape[1:])))
    elif splits:
        d = b.draw(st.sampled_from(splits))
        target, shape = [0] * (len(v.shape) - 1) + [d, -1], v.shape[:-1] + (d, last // d)
    else:
        return
    b.node("Reshape", [v, b.constant(np.array(target, np.int64), "shape", keep=False)], [shape], v.constant)


def transpose(b: Builder) -> None:
    v = b.pick(lambda u: len(u.shape) >= 1)
    kind = b.draw(st.sampled_from(["identity", "permute", "default"]))
    if kind == "default":
        b.node("Transpose", [v], [tuple(reversed(v.shape))], v.constant)
        return
    perm = list(range(len(v.shape)))
    if kind == "permute":
        perm = b.draw(st.permutations(perm))
    b.node("Transpose", [v], [tuple(v.shape[p] for p in perm)], v.constant, perm=perm)


def conv(b: Builder) -> None:
    v = b.pick(lambda u: len(u.shape) == 4 and static(u.shape[1:]) and u.shape[0] == BATCH, computed=True)
    if v is None:
        return
    _, channels, height, width = v.shape
    k = b.draw(st.sampled_from([1, 3]))
    pad = b.draw(st.sampled_from([0, k // 2]))
    if height + 2 * pad < k or width + 2 * pad < k:
        return
    m = b.draw(st.integers(1, 3))
    w = b.constant(b.floats((m, channels, k, k), -1, 1), "w", keep=False)
    inputs = [v, w] + ([b.constant(b.floats((m,)), "bias", keep=False)] if b.draw(st.booleans()) else [])
    shape = (BATCH, m, height + 2 * pad - k + 1, width + 2 * pad - k + 1)
    b.node("Conv", inputs, [shape], False, kernel_shape=[k, k], pads=[pad] * 4)


def matmul(b: Builder) -> None:
    v = b.pick(lambda u: len(u.shape) >= 2 and isinstance(u.shape[-1], int), computed=True)
    if v is None:
        return
    m = b.draw(st.integers(1, 4))
    w = b.constant(b.floats((v.shape[-1], m), -1, 1), "w", keep=False)
    b.node("MatMul", [v, w], [v.shape[:-1] + (m,)], False)


def constant_subgraph(b: Builder) -> None:
    """A chain of ops over constants only, then combined with a computed value."""
    v = b.pick(computed=True)
    shape = compatible_shape(b, v.shape)
    c = b.constant(b.floats(shape))
    for _ in range(b.draw(st.integers(1, 3))):
        op = b.draw(st.sampled_from(["Neg", "Abs", "Add", "Mul", "Identity", "Sqrt", "Shape-Reshape"]))
        if op == "Add" or op == "Mul":
            (c,) = b.node(op, [c, b.constant(b.floats(shape))], [shape], True)
        elif op == "Sqrt":
            (a,) = b.node("Abs", [c], [shape], True)
            (c,) = b.node("Sqrt", [a], [shape], True)
        elif op == "Shape-Reshape":  # Reshape(c, Shape(c)): constant shape arithmetic
            (s,) = b.node("Shape", [c], [(len(shape),)], True)
            b.values.remove(s)
            (c,) = b.node("Reshape", [c, s], [shape], True)
        else:
            (c,) = b.node(op, [c], [shape], True)
    op = b.draw(st.sampled_from(["Add", "Mul"]))
    b.node(op, [v, c], [broadcast(v.shape, shape)], False)


def duplicate(b: Builder) -> None:
    """Copy an existing node (same op, inputs and attributes): a common subexpression."""
    candidates = [n for n in b.nodes if n.op_type not in ("Constant",)]
    if not candidates:
        return
    node = candidates[b.draw(st.integers(0, len(candidates) - 1))]
    by_name = {v.name: v for v in b.values}
    outs = []
    for name in node.output:
        old = by_name.get(name)
        outs.append(Value(b.fresh("dup_"), old.shape if old else None, old.constant if old else False))
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = b.fresh("dup_n")
    del copy.output[:]
    copy.output.extend(o.name for o in outs)
    b.nodes.append(copy)
    b.values.extend(o for o, name in zip(outs, node.output) if name in by_name)


def cast(b: Builder) -> None:
    v = b.pick()
    if b.draw(st.booleans()):
        b.node("Cast", [v], [v.shape], v.constant, to=TensorProto.FLOAT)
    else:
        (d,) = b.node("Cast", [v], [v.shape], v.constant, to=TensorProto.DOUBLE)
        b.values.remove(d)
        b.node("Cast", [d], [v.shape], v.constant, to=TensorProto.FLOAT)


def expand(b: Builder) -> None:
    v = b.pick()
    target = compatible_shape(b, v.shape)
    b.node("Expand", [v, b.constant(np.array(target, np.int64), "shape", keep=False)], [v.shape], v.constant)


def concat_or_pad(b: Builder) -> None:
    v = b.pick(lambda u: len(u.shape) >= 1)
    if b.draw(st.booleans()):
        b.node("Concat", [v], [v.shape], v.constant, axis=b.draw(st.integers(0, len(v.shape) - 1)))
    else:
        pads = b.constant(np.zeros(2 * len(v.shape), np.int64), "pads", keep=False)
        b.node("Pad", [v, pads], [v.shape], v.constant)


def split(b: Builder) -> None:
    """Split a static dim of size >= 2 in two: a node with two outputs."""
    v = b.pick(lambda u: any(isinstance(d, int) and d >= 2 for d in u.shape))
    if v is None:
        return
    axis = b.draw(st.sampled_from([i for i, d in enumerate(v.shape) if isinstance(d, int) and d >= 2]))
    first = b.draw(st.integers(1, v.shape[axis] - 1))
    sizes = b.constant(np.array([first, v.shape[axis] - first], np.int64), "split", keep=False)
    shapes = [v.shape[:axis] + (n,) + v.shape[axis + 1:] for n in (first, v.shape[axis] - first)]
    b.node("Split", [v, sizes], shapes, v.constant, axis=axis)


def cancelling_constants(b: Builder) -> None:
    """Near misses of constant-chain merging (issue 15): ``(x + 65504) - 65504`` (0 for a small
    x in float32, not x), a shift then a nearly equal opposite one, or ``x * 1e38 * 1e-38`` (inf
    on the way for |x| > 3.4). Merging them changes the result far beyond rounding."""
    v = b.pick(computed=True)
    kind = b.draw(st.sampled_from(["exact", "near", "scale"]))
    if kind == "scale":
        ops, first, second = ("Mul", "Mul"), 1e38, 1e-38
    else:
        first = b.draw(st.sampled_from([65504.0, 4096.0, 1e6]))
        second = first if kind == "exact" else first * (1 + b.draw(st.sampled_from([-1, 1])) / 64)
        ops = ("Add", "Sub")
    (v,) = b.node(ops[0], [v, b.constant(np.array(first, np.float32), "big")], [v.shape], False)
    b.node(ops[1], [v, b.constant(np.array(second, np.float32), "big")], [v.shape], False)


STEPS = [unary, binary_values, binary_constant, neutral, identity_chain, dropout, reshape_same, reshape_real,
         transpose, conv, matmul, constant_subgraph, duplicate, cast, expand, concat_or_pad, split,
         cancelling_constants]


def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, v.dtype, list(v.shape))


@st.composite
def onnx_models(draw, max_steps: int = 14) -> onnx.ModelProto:
    """A valid float32, opset-17 model whose inputs have a dynamic batch dim ``N``."""
    b = Builder(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    layout = draw(st.sampled_from([(BATCH, 4), (BATCH, 3, 4), (BATCH, 2, 4, 4), (BATCH, 1, 5, 3), (BATCH, 1)]))
    for i in range(draw(st.integers(1, 2))):
        x = Value(f"x{i}", layout, False)
        b.inputs.append(_value_info(x))
        b.values.append(x)
    for _ in range(draw(st.integers(1, max_steps))):
        draw(st.sampled_from(STEPS))(b)
    inputs = {i.name for i in b.inputs}
    last = next(v for v in reversed(b.values) if v.name not in inputs) if len(b.values) > len(inputs) else None
    chosen = [last] if last else []
    extra = [v for v in b.values + b.other_outputs if v is not last]
    for _ in range(draw(st.integers(0, 2))):
        if extra:
            v = extra.pop(draw(st.integers(0, len(extra) - 1)))
            chosen.append(v)
    outputs = []
    for v in chosen or [b.values[0]]:
        if v.name in inputs or v.initializer:  # a graph output must be a node's output
            (v,) = b.node("Identity", [v], [v.shape], v.constant)
        outputs.append(v)
    graph = helper.make_graph(b.nodes, "random", b.inputs, [_value_info(v) for v in outputs],
                              initializer=b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
