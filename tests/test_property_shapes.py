"""Property test: random shape arithmetic folds exactly, and only as far as the shapes fix it.

Each example is a float input ``x`` of random rank whose dims are sizes or the names
``a``/``b``, and a random chain of the ops exporters compute shapes with (Shape with
start/end, Size, Gather, Slice with any bounds and steps, Concat, Unsqueeze, Squeeze,
Add/Sub/Mul/Div/Mod/Min/Max, Equal+Where, Cast to int32 and back, ReduceProd/ReduceSum)
whose values are graph outputs, plus the exporter's reshape idiom (a target of products
of ``Gather(Shape(x), i)``, with 0 and -1 mixed in), ``ConstantOfShape`` and ``Range``.

Checked at two sizes of ``a``/``b`` against onnxruntime: the optimized model's outputs
(exactly); the analysis's values and shapes of every intermediate tensor, wherever it
claims to know them; with every dim static, no Shape or Size node left; the input's
dims never frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fusekit.api import optimize
from fusekit.model_io import load_model
from fusekit.passes._shapes.analysis import Analysis
from fusekit.passes._shapes.expr import Expr
from fusekit.shapes import annotate_shapes
from tests.helpers import run_ort

PASSES = ["infer-shapes", "symbolic-shapes", "fold-shapes", "fold-constants", "eliminate-dead-code", "remove-noops"]
ENVS = ({"a": 2, "b": 3}, {"a": 1, "b": 4})
BIG = 2**62


@dataclass
class Prog:
    draw: object
    dims: list
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    vecs: list = field(default_factory=list)  # (name, length) of 1-D int64 values
    scalars: list = field(default_factory=list)  # names of 0-D int64 values
    outputs: list = field(default_factory=list)  # value infos
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, values, scalar: bool = False) -> str:
        name = self.name("c")
        array = np.array(values, dtype=np.int64).reshape(() if scalar else (-1,))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op + "_n"), **attrs))
        return out

    def vec(self, length: int) -> str:
        name = self.node("Identity", [self.draw(st.sampled_from([n for n, k in self.vecs if k == length]))]) \
            if any(k == length for _, k in self.vecs) else None
        return name


def _slice_len(start: int, end: int, step: int, n: int) -> int:
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return len(range(start, end, step))


def _step(p: Prog) -> None:
    draw, rank = p.draw, len(p.dims)
    kind = draw(st.sampled_from(["shape", "size", "gather", "gathers", "slice", "concat", "unsqueeze", "squeeze",
                                 "arith", "divmod", "where", "cast", "reduce"]))
    vecs = [v for v in p.vecs if v[1] > 0]
    if kind == "shape":
        start, end = draw(st.integers(-rank - 1, rank + 1)), draw(st.integers(-rank - 1, rank + 1))
        out = p.node("Shape", ["x"], start=start, end=end)
        p.vecs.append((out, _slice_len(start, end, 1, rank)))
    elif kind == "size":
        p.scalars.append(p.node("Size", ["x"]))
    elif kind == "gather" and vecs:
        v, n = draw(st.sampled_from(vecs))
        p.scalars.append(p.node("Gather", [v, p.const(draw(st.integers(-n, n - 1)), scalar=True)], axis=0))
    elif kind == "gathers" and vecs:
        v, n = draw(st.sampled_from(vecs))
        idx = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))
        p.vecs.append((p.node("Gather", [v, p.const(idx)], axis=0), len(idx)))
    elif kind == "slice" and p.vecs:
        v, n = draw(st.sampled_from(p.vecs))
        bound = st.one_of(st.integers(-n - 2, n + 2), st.sampled_from([BIG, -BIG]))
        start, end, step = draw(bound), draw(bound), draw(st.sampled_from([1, 1, 2, -1]))
        out = p.node("Slice", [v, p.const([start]), p.const([end]), p.const([0]), p.const([step])])
        p.vecs.append((out, _slice_len(start, end, step, n)))
    elif kind == "concat" and p.vecs:
        parts = draw(st.lists(st.sampled_from(p.vecs), min_size=1, max_size=3))
        extra = draw(st.lists(st.integers(-3, 6), max_size=2))
        inputs = [v for v, _ in parts] + ([p.const(extra)] if extra else [])
        p.vecs.append((p.node("Concat", inputs, axis=0), sum(n for _, n in parts) + len(extra)))
    elif kind == "unsqueeze" and p.scalars:
        p.vecs.append((p.node("Unsqueeze", [draw(st.sampled_from(p.scalars)), p.const([0])]), 1))
    elif kind == "squeeze" and any(n == 1 for _, n in p.vecs):
        v = draw(st.sampled_from([v for v, n in p.vecs if n == 1]))
        p.scalars.append(p.node("Squeeze", [v, p.const([0])]))
    elif kind == "arith" and (p.vecs or p.scalars):
        left, n = _operand(p)
        op = draw(st.sampled_from(["Add", "Sub", "Mul", "Max", "Min"]))
        if draw(st.booleans()) or n is None:
            right = p.const(draw(st.integers(-3, 5)), scalar=True)
        else:
            same = [v for v, k in p.vecs if k == n] + p.scalars
            right = draw(st.sampled_from(same))
        out = p.node(op, [left, right] if draw(st.booleans()) else [right, left])
        _record(p, out, n)
    elif kind == "divmod" and (p.vecs or p.scalars):
        left, n = _operand(p)
        op = draw(st.sampled_from(["Div", "Mod"]))
        out = p.node(op, [left, p.const(draw(st.integers(1, 4)), scalar=True)])
        _record(p, out, n)
    elif kind == "where" and p.vecs:
        v, n = draw(st.sampled_from(p.vecs))
        cond = p.node("Equal", [v, p.const(draw(st.integers(-1, 3)), scalar=True)])
        other = p.const(draw(st.integers(-2, 5)), scalar=True)
        p.vecs.append((p.node("Where", [cond, other, v]), n))
    elif kind == "cast" and (p.vecs or p.scalars):
        value, n = _operand(p)
        out = p.node("Cast", [p.node("Cast", [value], to=TensorProto.INT32)], to=TensorProto.INT64)
        _record(p, out, n)
    elif kind == "reduce" and vecs:
        v, _ = draw(st.sampled_from(vecs))
        p.scalars.append(p.node(draw(st.sampled_from(["ReduceProd", "ReduceSum"])), [v], keepdims=0))


def _operand(p: Prog) -> tuple[str, int | None]:
    choices = [(v, n) for v, n in p.vecs] + [(s, None) for s in p.scalars]
    return p.draw(st.sampled_from(choices))


def _record(p: Prog, out: str, n: int | None) -> None:
    if n is None:
        p.scalars.append(out)
    else:
        p.vecs.append((out, n))


def _reshape_idiom(p: Prog) -> None:
    """y = Reshape(x, Concat(prod of Gather(Shape(x), i) per group of adjacent axes)), the
    exporter's way; an element may be -1 or 0 (copy) instead, where valid."""
    draw, rank = p.draw, len(p.dims)
    cuts = sorted(draw(st.sets(st.integers(1, rank - 1), max_size=rank - 1))) if rank > 1 else []
    groups = [list(range(lo, hi)) for lo, hi in zip([0] + cuts, cuts + [rank])]
    shape = p.node("Shape", ["x"])
    minus = draw(st.one_of(st.none(), st.integers(0, len(groups) - 1)))
    parts = []
    for g, axes in enumerate(groups):
        if g == minus:
            parts.append(p.const([-1]))
            continue
        if axes == [g] and draw(st.booleans()):  # still aligned with the input: 0 copies
            parts.append(p.const([0]))
            continue
        total = None
        for axis in axes:
            d = p.node("Gather", [shape, p.const(axis, scalar=True)], axis=0)
            total = d if total is None else p.node("Mul", [total, d])
        parts.append(p.node("Unsqueeze", [total, p.const([0])]))
    target = p.node("Concat", parts, axis=0)
    y = p.node("Relu", [p.node("Reshape", ["x", target])])
    p.outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [None] * len(groups)))
    # and shapes read from shape values: ConstantOfShape of dims, Range to a dim
    start = draw(st.integers(0, rank))
    tail = p.node("Slice", [shape, p.const([start]), p.const([BIG])])
    zeros = p.node("ConstantOfShape", [tail], value=numpy_helper.from_array(np.array([7], np.int64)))
    p.outputs.append(helper.make_tensor_value_info(zeros, TensorProto.INT64, [None] * (rank - start)))
    n = p.node("Gather", [shape, p.const(draw(st.integers(0, rank - 1)), scalar=True)], axis=0)
    r = p.node("Range", [p.const(0, scalar=True), n, p.const(1, scalar=True)])
    p.outputs.append(helper.make_tensor_value_info(r, TensorProto.INT64, [None]))


@st.composite
def programs(draw):
    rank = draw(st.integers(1, 4))
    dims = [draw(st.one_of(st.integers(1, 4), st.sampled_from(["a", "b"]))) for _ in range(rank)]
    p = Prog(draw, dims)
    for _ in range(draw(st.integers(1, 12))):
        _step(p)
    for name in draw(st.lists(st.sampled_from([v for v, _ in p.vecs] + p.scalars), max_size=4, unique=True)
                     ) if p.vecs or p.scalars else []:
        is_vec = any(v == name for v, _ in p.vecs)
        p.outputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, [None] if is_vec else []))
    _reshape_idiom(p)
    outputs = list({vi.name: vi for vi in p.outputs}.values())
    graph = helper.make_graph(p.nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              outputs, p.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, env: dict) -> dict:
    dims = [d.dim_value if d.HasField("dim_value") else env[d.dim_param]
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(0).standard_normal(dims).astype(np.float32)}


def _all_values(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Every node output of ``model``, by name (each one made a graph output)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    listed = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(t) for n in model.graph.node
                                for t in n.output if t not in listed)
    return run_ort(exposed, feeds)


def _evaluable(e: Expr, env: dict) -> bool:
    return e.atoms <= env.keys()


@given(programs())
def test_shape_arithmetic_folds_exactly(model):
    optimized = optimize(model, passes=PASSES)
    onnx.checker.check_model(optimized, full_check=True)
    assert list(optimized.graph.input) == list(model.graph.input)  # never frozen
    for env in ENVS:
        feeds = _feeds(model, env)
        expected, got = run_ort(model, feeds), run_ort(optimized, feeds)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"output {name} at {env}")
    if all(isinstance(d, int) for d in _input_dims(model)):
        assert not {n.op_type for n in optimized.graph.node} & {"Shape", "Size"}, onnx.printer.to_text(optimized.graph)


def _input_dims(model: onnx.ModelProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]


@given(programs())
def test_the_analysis_claims_only_what_is_true(model):
    graph = load_model(model).graph
    annotate_shapes(graph)
    analysis = Analysis(graph)
    tensors = [t for n in graph.nodes for t in n.outputs]
    for env in ENVS:
        actual = _all_values(model, _feeds(model, env))
        for t in tensors:
            value = actual[t.name]
            shape = analysis.shapes.get(id(t))
            if shape is not None:
                assert len(shape) == value.ndim, t.name
                for axis, d in enumerate(shape):
                    d = analysis.final(d)
                    if _evaluable(d, env):
                        assert d.evaluate(env) == value.shape[axis], (t.name, axis, str(d), env)
            known = analysis.values.get(id(t))
            if known is not None:
                assert value.size == len(known.elems) and (value.ndim == 0) == known.scalar, t.name
                for i, e in enumerate(known.elems):
                    if e is not None and _evaluable(analysis.final(e), env):
                        assert analysis.final(e).evaluate(env) == value.reshape(-1)[i], (t.name, i, str(e), env)
