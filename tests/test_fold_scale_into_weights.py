"""fold-scale-into-weights: constant scales and shifts vanish into weights, chains merge, exactly.

Property tests draw a linear op (tests/linear_cases.py: Conv/ConvTranspose with groups,
strides, dilations, pads; Gemm with transA/transB, alpha, beta, C; MatMul of rank 1-4)
followed by Mul/Add/Sub/Div by a constant that is a scalar or broadcasts per output
channel in every way it can be written, in float16, float32 and float64, and compare
before/after under onnxruntime (onnx.reference for float64) at batch 1 and 3. Chains
of scales and shifts after a linear op must vanish (MatMul keeps one bias Add); after
anything else they must end as at most one scale then one shift. Near misses keep
their node and say why.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from onnx import numpy_helper

from fusekit import registry
from tests.helpers import assert_same_outputs, feeds_for, inspect_pass, op_counts, optimize_with, parse, removed_by
from tests.linear_cases import (BATCH, ONNX_TYPES, Linear, Pattern, assert_close, away_from_zero, linear_ops,
                                patterns, values)
from tests.zoo_models import zoo_model

PASSES = ["fold-scale-into-weights", "infer-shapes"]
SCALES, SHIFTS = ("Mul", "Div"), ("Add", "Sub")


def channel_shape(draw, lin: Linear) -> tuple[int, ...]:
    """A constant shape that is a scalar or broadcasts per output channel of ``lin``."""
    rank, axis = len(lin.shape), lin.axis
    length = draw(st.integers(0, rank))
    shape = [1] * length
    if length >= rank - axis and draw(st.integers(0, 3)):  # mostly one value per channel
        shape[length - (rank - axis)] = lin.channels
    return tuple(shape)


def add_affine(draw, p: Pattern, rng: np.random.Generator, op: str, source: str, shape: tuple,
               first: bool | None = None, name: str | None = None, value: np.ndarray | None = None) -> str:
    """``op(source, c)`` (or ``op(c, source)``) with a constant ``c`` of ``shape``."""
    if value is None:
        value = away_from_zero(rng, shape) if op in SCALES else values(rng, shape)
    const = p.const(value, "k")
    if first is None:
        first = op in ("Mul", "Add") and draw(st.booleans())
    return p.node(op, [const, source] if first else [source, const], name=name)


# ---------------------------------------------------------------- into the weights

@st.composite
def scale_after_linear(draw):
    p, rng = draw(patterns())
    lin = draw(linear_ops(p, rng))
    op = draw(st.sampled_from(SCALES if lin.op == "MatMul" else SCALES + SHIFTS))
    y = add_affine(draw, p, rng, op, lin.out, channel_shape(draw, lin), name="target")
    p.outputs.append((y if draw(st.booleans()) else p.node("Relu", [y]), lin.shape))
    return p.model(), p.dtype, lin.op, op


@given(scale_after_linear())
def test_per_channel_constant_is_folded_into_the_weights(case):
    model, dtype, linear, op = case
    note(onnx.printer.to_text(model.graph))
    assume(not reassociation_hazard(model))
    optimized, report = optimize_with(model, PASSES)
    note(onnx.printer.to_text(optimized.graph))
    counts = op_counts(optimized)
    assert counts[op] == 0 and counts[linear] == 1
    assert len(optimized.graph.node) == len(model.graph.node) - 1
    assert removed_by(report, "target") == ["fold-scale-into-weights"]
    assert_close(model, optimized, dtype, label=f"{op}-into-{linear}")


@st.composite
def chain_after_linear(draw):
    p, rng = draw(patterns())
    lin = draw(linear_ops(p, rng))
    y = lin.out
    for _ in range(draw(st.integers(1, 5))):
        y = add_affine(draw, p, rng, draw(st.sampled_from(SCALES + SHIFTS)), y, channel_shape(draw, lin))
    p.outputs.append((y, lin.shape))
    return p.model(), p.dtype, lin.op


@given(chain_after_linear())
def test_chain_after_linear_op_vanishes_into_it(case):
    """Any chain of per-channel scales and shifts: nothing left but the op (MatMul: and one bias)."""
    model, dtype, linear = case
    note(onnx.printer.to_text(model.graph))
    assume(not reassociation_hazard(model))
    optimized, report = optimize_with(model, PASSES)
    note(onnx.printer.to_text(optimized.graph))
    counts = op_counts(optimized)
    shifts = counts["Add"] + counts["Sub"]
    assert counts[linear] == 1 and counts["Mul"] + counts["Div"] == 0
    assert shifts == (0 if linear != "MatMul" else min(shifts, 1))
    assert report.converged
    assert_close(model, optimized, dtype, label=f"chain-into-{linear}")


# ---------------------------------------------------------------- chains anywhere

def reassociation_hazard(model: onnx.ModelProto, ratio: float = 4.0) -> bool:
    """An oracle written apart from the pass: would composing the model's one chain of constant
    scales/shifts as ``x * S + T`` change results? Its shift terms (each times the scales after
    it) cancel to a ``T`` more than ``ratio`` times smaller than the largest, or a running
    product of its scales strays more than ``ratio`` outside 1..``S``."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    terms, partials = [], []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
            terms.append(beta * inits[node.input[2]])  # a bias is a shift like the others (Gemm: beta * C)
        if node.op_type not in SCALES + SHIFTS:
            continue
        c = next(inits[i] for i in node.input if i in inits)
        f = {"Mul": c, "Div": 1 / c, "Add": c, "Sub": -c}[node.op_type]
        if node.op_type in SCALES:
            terms = [t * f for t in terms]
            partials.append(f if not partials else partials[-1] * f)
        else:
            terms.append(f)
    if len(terms) > 1:
        parts = np.abs(np.broadcast_arrays(*terms))
        if np.any(np.abs(sum(terms)) * ratio < parts.max(axis=0)):
            return True
    if len(partials) > 1:
        total = np.abs(partials[-1])
        low, high = np.minimum(total, 1) / ratio, np.maximum(total, 1) * ratio
        return any(np.any((np.abs(q) < low) | (np.abs(q) > high)) for q in partials[:-1])
    return False


def data_shape(draw) -> tuple:
    return (BATCH, *[draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, 3)))])


def sub_shape(draw, shape: tuple) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape`` without growing it (right-aligned, 1 or equal)."""
    length = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - length:]
    return tuple(1 if d == BATCH or draw(st.booleans()) else d for d in tail)


@st.composite
def chain(draw, one_shape: bool):
    """x -> Relu -> 1..6 constant scales/shifts. ``one_shape``: every constant is a scalar or
    has one shape S (merging never grows a constant); else each has its own shape."""
    p, rng = draw(patterns())
    p.x_shape = data_shape(draw)
    shape = sub_shape(draw, p.x_shape)
    y = p.node("Relu", ["x"])
    for _ in range(draw(st.integers(1, 6))):
        const_shape = (shape if draw(st.booleans()) else ()) if one_shape else sub_shape(draw, p.x_shape)
        y = add_affine(draw, p, rng, draw(st.sampled_from(SCALES + SHIFTS)), y, const_shape)
    p.outputs.append((y, p.x_shape))
    return p.model(), p.dtype


@given(chain(one_shape=True))
def test_chain_ends_as_one_scale_then_one_shift(case):
    model, dtype = case
    note(onnx.printer.to_text(model.graph))
    assume(not reassociation_hazard(model))
    optimized, report = optimize_with(model, PASSES)
    note(onnx.printer.to_text(optimized.graph))
    ops = [n.op_type for n in optimized.graph.node]
    assert ops[0] == "Relu" and len(ops) <= 3
    assert sum(op in SCALES for op in ops) <= 1 and sum(op in SHIFTS for op in ops) <= 1
    assert ops[1:] in ([], ["Mul"], ["Div"], ["Add"], ["Sub"], ["Mul", "Add"], ["Mul", "Sub"], ["Div", "Add"],
                       ["Div", "Sub"])
    assert_close(model, optimized, dtype, label="chain")


@given(chain(one_shape=False))
def test_chain_with_constants_of_different_shapes_never_grows(case):
    """Merges that would make a constant larger than both are declined; the rest is exact."""
    model, dtype = case
    note(onnx.printer.to_text(model.graph))
    optimized, _ = optimize_with(model, PASSES)
    assert len(optimized.graph.node) <= len(model.graph.node)
    largest = max(np.prod(t.dims) for t in model.graph.initializer)
    assert all(np.prod(t.dims) <= largest for t in optimized.graph.initializer)
    assert_close(model, optimized, dtype, label="chain-mixed-shapes")


# ---------------------------------------------------------------- near misses

NEAR_MISSES = {
    "not-per-channel": "does not broadcast per output channel",
    "grows-rank": "exceeds the output's rank",
    "constant-first": "the constant is the first operand",
    "other-consumer": "has other consumers",
    "graph-output": "is a graph output",
    "weight-input": "weights are not constant",
    "bias-input": "not constant",
    "matmul-add": "MatMul + ",
    "divide-by-zero": "holding a zero",
}


@st.composite
def near_miss(draw):
    kind = draw(st.sampled_from(sorted(NEAR_MISSES)))
    p, rng = draw(patterns())
    ops = {"bias-input": ("Conv", "ConvTranspose", "Gemm"), "matmul-add": ("MatMul",)}.get(
        kind, ("Conv", "ConvTranspose", "Gemm", "MatMul"))
    lin = draw(linear_ops(p, rng, ops=ops, constant_weights=kind != "weight-input"))
    default = SCALES + SHIFTS if lin.op != "MatMul" else SCALES
    op = draw(st.sampled_from({"matmul-add": SHIFTS, "constant-first": ("Sub", "Div"),
                               "divide-by-zero": ("Div",)}.get(kind, default)))
    shape, out_shape, first, value = channel_shape(draw, lin), lin.shape, None, None
    if kind == "not-per-channel":
        other = [i for i, d in enumerate(lin.shape) if i != lin.axis and isinstance(d, int) and d > 1]
        assume(other)
        axis = draw(st.sampled_from(other))
        shape = tuple(d if i == axis else 1 for i, d in enumerate(lin.shape))
    elif kind == "grows-rank":
        shape = (2,) + (1,) * len(lin.shape)
        out_shape = (2, *lin.shape)
    elif kind == "constant-first":
        first = True
    elif kind == "bias-input":
        node = p.nodes[-1]
        bias = p.fresh("bias_in")
        p.inputs.append((bias, ONNX_TYPES[p.dtype], (lin.channels,)))
        node.input.extend([bias] if len(node.input) == 2 else [])
        node.input[2] = bias
    elif kind == "divide-by-zero":
        value = np.array(away_from_zero(rng, shape))
        value.flat[0] = 0.0
    y = add_affine(draw, p, rng, op, lin.out, shape, first=first, name="target", value=value)
    p.outputs.append((y, out_shape))
    if kind == "other-consumer":
        p.outputs.append((p.node("Sigmoid", [lin.out]), lin.shape))
    elif kind == "graph-output":
        p.outputs.append((lin.out, lin.shape))
    return kind, p.model(), p.dtype


@given(near_miss())
def test_near_miss_is_kept_with_its_reason(case):
    kind, model, dtype = case
    note(kind)
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == op_counts(model)
    assert "target" not in {e.node for e in report.events}
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["target"]
    assert not finding.applies and NEAR_MISSES[kind] in finding.message, finding.message
    assert_close(model, optimized, dtype, label=f"near-miss-{kind}")


# ---------------------------------------------------------------- by hand

def test_conv_mul_add_matches_the_formula_and_keeps_the_output_name():
    model = parse("g (float[N,2,3,3] x) => (float[N,2,3,3] y) <float[2,2,1,1] w = {1, 2, 3, 4}, "
                  "float[2] b = {0.5, -1}, float[2,1,1] s = {2, 0.25}, float[1,2,1,1] t = {-1, 3}> {\n"
                  " c = Conv(x, w, b)\n [scale] m = Mul(s, c)\n [shift] y = Sub(m, t)\n}")
    optimized, report = optimize_with(model, PASSES)
    (conv,) = optimized.graph.node
    assert conv.op_type == "Conv" and list(conv.output) == ["y"]
    inits = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    np.testing.assert_array_equal(inits[conv.input[1]], np.array([2, 4, 0.75, 1], np.float32).reshape(2, 2, 1, 1))
    np.testing.assert_array_equal(inits[conv.input[2]], np.array([0.5 * 2 + 1, -1 * 0.25 - 3], np.float32))
    assert removed_by(report, "scale") == removed_by(report, "shift") == ["fold-scale-into-weights"]
    assert_same_outputs(model, optimized)


def test_gemm_gets_a_bias_and_beta_one():
    model = parse("g (float[N,3] x) => (float[N,2] y) <float[2,3] w = {1, 2, 3, 4, 5, 6}, float c = {1}, "
                  "float[2] t = {10, 20}> {\n g = Gemm<transB = 1, alpha = 2.0, beta = 0.5>(x, w, c)\n"
                  " y = Add(g, t)\n}")
    optimized, _ = optimize_with(model, PASSES)
    (gemm,) = optimized.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs["beta"] == 1.0 and attrs["alpha"] == 2.0
    inits = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    np.testing.assert_array_equal(inits[gemm.input[2]], np.array([10.5, 20.5], np.float32))
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("body,ops,constant", [
    ("a = Div(r, k2)\n y = Div(a, k4)", ["Relu", "Div"], 8.0),
    ("a = Sub(r, k2)\n y = Sub(a, k4)", ["Relu", "Sub"], 6.0),
    ("a = Mul(r, k2)\n y = Div(a, k4)", ["Relu", "Mul"], 0.5),
    ("a = Add(k2, r)\n y = Sub(a, k4)", ["Relu", "Add"], -2.0),
    ("a = Sub(r, k2)\n y = Mul(a, k4)", ["Relu", "Mul", "Sub"], 8.0),
    ("a = Add(r, k2)\n b = Mul(a, k4)\n y = Add(b, k2)", ["Relu", "Mul", "Add"], 10.0),
], ids=["div-div", "sub-sub", "mul-div", "add-sub", "sub-mul", "add-mul-add"])
def test_merge_keeps_the_natural_op(body, ops, constant):
    model = parse("g (float[N,3] x) => (float[N,3] y) <float k2 = {2}, float k4 = {4}> {\n"
                  f" r = Relu(x)\n {body}\n}}")
    optimized, _ = optimize_with(model, PASSES)
    assert [n.op_type for n in optimized.graph.node] == ops
    last = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}[optimized.graph.node[-1].input[1]]
    assert float(last) == constant
    assert_same_outputs(model, optimized)


def test_integer_chain_is_not_merged():
    """Integer Div truncates and sums may wrap: only float types are rewritten."""
    model = parse("g (int32[N,3] x) => (int32[N,3] y) <int32 k2 = {2}, int32 k3 = {3}> {\n"
                  " r = Abs(x)\n a = Div(r, k2)\n [outer] y = Div(a, k3)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Div"] == 2
    assert inspect_pass(model, "fold-scale-into-weights")["outer"][0].message == \
        "the constant is int32, not float16/float32/float64"
    assert_same_outputs(model, optimized)


def test_intermediate_graph_output_stops_the_merge():
    model = parse("g (float[N,3] x) => (float[N,3] y, float[N,3] a) <float k2 = {2}, float k4 = {4}> {\n"
                  " r = Relu(x)\n a = Mul(r, k2)\n [outer] y = Mul(a, k4)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Mul"] == 2
    assert "is a graph output" in inspect_pass(model, "fold-scale-into-weights")["outer"][0].message
    assert_same_outputs(model, optimized)


def test_inspect_says_why():
    model = parse("g (float[N,2,3,3] x) => (float[N,2,3,3] y) <float[2,2,1,1] w = {1, 2, 3, 4}, "
                  "float[2,1,1] s = {2, 0.25}, float[3] row = {1, 2, 3}, float k = {2}> {\n"
                  " [conv] c = Conv(x, w)\n [per_channel] m = Mul(c, s)\n [per_column] n = Mul(m, row)\n"
                  " [first] o = Div(k, n)\n [merge] p = Add(o, k)\n [merge2] y = Add(p, k)\n}")
    findings = {n: (f[0].applies, f[0].message) for n, f in inspect_pass(model, "fold-scale-into-weights").items()}
    assert findings == {
        "per_channel": (True, "Mul folded into Conv 'conv'"),
        "per_column": (False, "merging it after Mul 'per_channel' would grow the constant to 6 values"),
        "first": (False, "the constant is the first operand of Div"),
        "merge": (True, "Add then Add merged into Add"),
        "merge2": (False, "it is part of the chain from Add 'merge'"),
    }
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Conv": 1, "Mul": 1, "Div": 1, "Add": 1}
    assert removed_by(report, "per_channel") == ["fold-scale-into-weights"]
    assert_same_outputs(model, optimized)


def test_pass_is_registered_in_the_fusion_stage_and_on_by_default():
    found = registry.discover()
    assert "fold-scale-into-weights" in [info.name for info in found.select()]
    cls = found.passes["fold-scale-into-weights"].cls
    assert cls.stage.name == "FUSION" and cls.priority > found.passes["decompose-batchnorm"].cls.priority


def test_convnext_layer_scale_is_folded_into_the_linear_layer():
    """ConvNeXt's ``gamma * Linear(y)``: MatMul, bias Add, Mul by gamma per channel. The Mul
    and Add swap and the Mul vanishes into the MatMul's weight."""
    model = onnx.load(str(zoo_model("convnext")))
    optimized, report = optimize_with(model)
    without, _ = optimize_with(model, skip=["fold-scale-into-weights"])
    assert {p.name: p.rewrites for p in report.passes}["fold-scale-into-weights"] == 6
    assert op_counts(optimized)["Mul"] == op_counts(without)["Mul"] - 6
    assert op_counts(optimized)["MatMul"] == op_counts(without)["MatMul"]
    batches = feeds_for(model, (1, 3))
    assert_same_outputs(model, optimized, batches)
    assert_close(model, optimized, np.dtype(np.float32), batches, label="convnext")


def test_bias_after_matmul_still_merges_with_the_next_shift():
    """MatMul + Add is the bias form: the Add stays, but an Add after it merges into it."""
    model = parse("g (float[N,4,3] x) => (float[N,4,2] y) <float[3,2] w = {1, 2, 3, 4, 5, 6}, float[2] b = {1, 2}, "
                  "float[4,2] c = {1, 2, 3, 4, 5, 6, 7, 8}> {\n m = MatMul(x, w)\n [bias] a = Add(m, b)\n"
                  " [more] y = Add(a, c)\n}")
    findings = {n: (f[0].applies, f[0].message) for n, f in inspect_pass(model, "fold-scale-into-weights").items()}
    assert findings["bias"] == (True, "Add then Add merged into Add")
    optimized, _ = optimize_with(model, PASSES)
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "Add"]
    assert_same_outputs(model, optimized)
    lone = parse("g (float[N,4,3] x) => (float[N,4,2] y) <float[3,2] w = {1, 2, 3, 4, 5, 6}, float[2] b = {1, 2}> {\n"
                 " [mm] m = MatMul(x, w)\n [bias] y = Add(m, b)\n}")
    (finding,) = inspect_pass(lone, "fold-scale-into-weights")["bias"]
    assert not finding.applies and finding.message == "MatMul 'mm' has no bias: MatMul + Add is the bias form"


def test_constants_built_over_several_rounds_are_cast_once():
    """Found by hypothesis: the Add cannot join the chain after it in round 1 (its constant
    would grow), round 1 merges the rest into a (4,2,2) scale and shift, round 2 merges the
    Add with them. Round 2 composes the float64 values round 1 kept, so float16 rounds once."""
    model = parse('<ir_version: 8, opset_import: ["" : 17]>\n'
                  "g (float16[N,4,2,2] x) => (float16[N,4,2,2] y) <float16[4,2,1] k3 = {15470, 47744, 15543, 14606, "
                  "14497, 47578, 48298, 15032}, float16[4,1,2] k6 = {16022, 47205, 49117, 49151, 14796, 15914, 48925, "
                  "49053}, float16 k9 = {14932}, float16[4,2,2] k12 = {15160, 49100, 16367, 48510, 15300, 14810, 15467, "
                  "14859, 48688, 16058, 48545, 15443, 48833, 15215, 48773, 48407}, float16[2] k15 = {5145, 38227}, "
                  "float16 k18 = {14635}> {\n r = Relu(x)\n a = Add(r, k3)\n b = Div(a, k6)\n c = Mul(b, k9)\n"
                  " d = Mul(c, k12)\n e = Sub(d, k15)\n y = Mul(e, k18)\n}")
    optimized, report = optimize_with(model, PASSES)
    assert [n.op_type for n in optimized.graph.node] == ["Relu", "Mul", "Add"]
    k = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    scale = 1 / k["k6"] * k["k9"] * k["k12"] * k["k18"]
    shift = k["k3"] * scale - k["k15"] * k["k18"]
    inits = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    _, mul, add = optimized.graph.node
    np.testing.assert_array_equal(inits[mul.input[1]], scale.astype(np.float16))
    np.testing.assert_array_equal(inits[add.input[1]], shift.astype(np.float16))
    assert_close(model, optimized, np.dtype(np.float16))


def test_merge_that_would_overflow_float16_is_declined():
    model = parse('<ir_version: 8, opset_import: ["" : 17]>\n'
                  "g (float16[N,3] x) => (float16[N,3] y) <float16 k = {23744}> {\n"  # 300
                  " r = Relu(x)\n [first] a = Div(r, k)\n b = Div(a, k)\n y = Add(b, k)\n}")
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["first"]
    assert not finding.applies and finding.message == "the merged Div constant would overflow float16"
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == op_counts(model)
    assert_close(model, optimized, np.dtype(np.float16))


# ---------------------------------------------------------------- exactness near misses (issue 15)

def _bitwise_same(original: onnx.ModelProto, optimized: onnx.ModelProto, x: np.ndarray) -> None:
    from tests.helpers import run_ort
    expected, got = run_ort(original, {"x": x}), run_ort(optimized, {"x": x})
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_add_then_sub_of_65504_after_matmul_is_kept():
    """The issue's model: in float32 ``(x + 65504) - 65504`` is 0 for a small x, not x."""
    rng = np.random.default_rng(0)
    w1 = ", ".join(f"{v:.6g}" for v in rng.standard_normal(16) * 1e-3)
    w2 = ", ".join(f"{v:.6g}" for v in rng.standard_normal(16))
    model = parse(f"g (float[N,4] x) => (float[N,4] y) <float[4,4] w1 = {{{w1}}}, float[4,4] w2 = {{{w2}}}, "
                  "float c = {65504}> {\n a = MatMul(x, w1)\n [add] b = Add(a, c)\n [sub] d = Sub(b, c)\n"
                  " y = MatMul(d, w2)\n}")
    optimized, report = fusekit_optimize(model)
    assert op_counts(optimized)["Sub"] == 1
    assert "sub" not in {e.node for e in report.events}
    finding = inspect_pass(model, "fold-scale-into-weights")["add"][0]
    assert not finding.applies and "cancel" in finding.message, finding.message
    for batch in (1, 3):
        _bitwise_same(model, optimized, rng.standard_normal((batch, 4)).astype(np.float32))


def fusekit_optimize(model: onnx.ModelProto):
    return optimize_with(model)  # every default pass: no other pass may merge the pair either


def chain_model(dtype: np.dtype, links: list[tuple[str, float]]) -> onnx.ModelProto:
    """x -> Relu -> one ``op(., c)`` per link; the first link's node is named ``first``."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, y = [onnx.helper.make_node("Relu", ["x"], ["r"])], [], "r"
    for i, (op, value) in enumerate(links):
        inits.append(numpy_helper.from_array(np.array(value, dtype), f"k{i}"))
        out = "y" if i == len(links) - 1 else f"v{i}"
        nodes.append(onnx.helper.make_node(op, [y, f"k{i}"], [out], name="first" if i == 0 else f"n{i}"))
        y = out
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", elem, ["N", 3])],
                                   [onnx.helper.make_tensor_value_info("y", elem, ["N", 3])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@given(st.sampled_from([np.float16, np.float32, np.float64]), st.floats(8.0, 30000.0), st.floats(-0.05, 0.05),
       st.booleans(), st.sampled_from(["Add", "Sub"]))
def test_shifts_that_cancel_are_not_merged(dtype, big, delta, scale_between, second):
    """``x + a`` then ``- a(1+d)`` (|d| small, maybe a scale between): the merged shift is far
    smaller than its parts, so the chain is kept and the outputs are bit for bit the same."""
    other = big * (1 + delta) * (2.0 if scale_between else 1.0) * (1 if second == "Sub" else -1)
    links = [("Add", big)] + ([("Mul", 2.0)] if scale_between else []) + [(second, other)]
    model = chain_model(dtype, links)
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Add"] + op_counts(optimized)["Sub"] == 2
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["first"]
    assert not finding.applies and "cancel" in finding.message, finding.message
    _bitwise_same(model, optimized, np.array([[1e-3, 0.5, 3.0]], dtype))


@pytest.mark.parametrize("dtype, up, down, x", [(np.float32, 1e30, 1e-30, 1e10), (np.float16, 1000, 0.001, 100.0),
                                                (np.float32, 1e-30, 1e30, 1e-10)])
def test_scales_that_leave_the_range_on_the_way_are_not_merged(dtype, up, down, x):
    """``x * 1e30 * 1e-30`` is inf for x = 1e10 in float32; ``x * 1`` is not (and the same for
    underflow the other way)."""
    model = chain_model(dtype, [("Mul", up), ("Mul", down)])
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Mul"] == 2
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["first"]
    assert "intermediate scale" in finding.message, finding.message
    _bitwise_same(model, optimized, np.array([[x, 1.0, 0.0]], dtype))


def test_merged_scale_that_would_be_subnormal_is_not_written():
    """``x * 0.5 / 1e38`` as ``x * 5e-39``: a float32 subnormal holds fewer bits than x needs."""
    model = chain_model(np.float32, [("Mul", 0.5), ("Div", 1e38)])
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Mul"] == 1 and op_counts(optimized)["Div"] == 1
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["first"]
    assert "underflow" in finding.message, finding.message
    _bitwise_same(model, optimized, np.array([[3.0, 1.7e-3, 1.0]], np.float32))


def test_conv_bias_cancelled_by_the_shift_is_not_folded():
    """``Conv(x, W, 65504) - 65504``: the bias is a constant shift too (MatMul + Add becomes Gemm)."""
    model = parse("g (float[N,1,2,2] x) => (float[N,1,2,2] y) <float[1,1,1,1] w = {1.5}, float[1] b = {65504.0}, "
                  "float t = {65504.0}> {\n c = Conv(x, w, b)\n [shift] y = Sub(c, t)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Sub"]
    (finding,) = inspect_pass(model, "fold-scale-into-weights")["shift"]
    assert "its bias and the shift: its constants cancel" in finding.message, finding.message
    _bitwise_same(model, optimized, np.full((2, 1, 2, 2), 1e-3, np.float32))
