"""symbolic-shapes: one name per dim across the graph; nothing frozen; no node touched.

Also the algebra underneath (passes/_shapes/expr.py): polynomials over named dims with
ONNX's integer semantics (Div truncates, Mod takes the divisor's sign).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from fusekit.passes._shapes.analysis import Analysis
from fusekit.passes._shapes.expr import Expr, compare, maximum, minimum, parse_dim_param
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASSES = ["infer-shapes", "symbolic-shapes"]


def shapes(model: onnx.ModelProto) -> dict[str, list]:
    found = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        found[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in vi.type.tensor_type.shape.dim]
    return found


# -- the algebra ------------------------------------------------------------------------

a, b = Expr.atom("a"), Expr.atom("b")
c = Expr.const


@pytest.mark.parametrize("x, y, quotient", [
    (c(-7), c(2), -3), (c(7), c(-2), -3), (c(-7), c(-2), 3), (c(6), c(3), 2),  # truncation, as onnxruntime
])
def test_constant_division_truncates(x, y, quotient):
    assert x.div(y) == c(quotient)


def test_polynomial_division_and_names():
    assert (a * b * c(4)).div(a * c(2)) == b * c(2)
    assert (a * b + b).div(b) == a + c(1)
    assert str((a + c(1)).div(c(2))) == "floor((a+1)/2)"  # exact only for a name of its own
    assert (a - c(1)).div(c(2)) is None  # may be negative: no name
    assert (a * c(4)).mod(c(2)) == c(0) and c(-7).mod(c(2)) == c(1)
    assert str(a * b * c(4) - a + c(3)) == "4*a*b-a+3"


def test_order_is_decided_only_when_it_holds_for_every_size():
    assert compare(a + c(1), a) == 1 and compare(a, a + c(2)) == -1
    assert compare(a, b) is None and compare(a, c(0)) is None  # a may be 0
    assert maximum(a, c(0)) == a and minimum(a, c(-1)) == c(-1)
    assert str(minimum(Expr.atom("seq"), c(512))) == "min(512,seq)"


@pytest.mark.parametrize("text", ["batch", "4*batch*seq", "seq+1", "2*a*b-3*c+4", "batch-1"])
def test_names_read_back_as_written(text):
    assert parse_dim_param(text).render() == text


@pytest.mark.parametrize("text", ["floor(seq/2)", "a**b", "unk__3", "N"])
def test_other_names_stay_names(text):
    assert parse_dim_param(text) == Expr.atom(text)


# -- the pass ---------------------------------------------------------------------------

SPLIT = """g (float[batch,64] x) => (float[N,4,16] y) <int64 zero = {0}, int64[1] axes = {0}, int64[2] rest = {4, 16}> {
  s = Shape(x)
  b = Gather<axis = 0>(s, zero)
  b1 = Unsqueeze(b, axes)
  target = Concat<axis = 0>(b1, rest)
  r = Reshape(x, target)
  t = Transpose<perm = [1, 0, 2]>(r)
  y = Transpose<perm = [1, 0, 2]>(t)
}"""


def test_a_made_up_name_becomes_the_real_one_everywhere():
    model = parse(SPLIT)
    optimized, report = optimize_with(model, PASSES)
    got = shapes(optimized)
    assert got["r"] == ["batch", 4, 16] and got["t"] == [4, "batch", 16]
    assert got["target"] == [3]
    assert got["y"] == ["N", 4, 16]  # the model's own output name stays
    assert op_counts(optimized) == op_counts(model) and report.events == []
    assert list(optimized.graph.input) == list(model.graph.input)
    assert_same_outputs(model, optimized)


def test_dims_computed_from_dims_are_named_by_their_expression():
    model = parse("""g (float[batch,seq,64] x) => (float[M,64] y) <int64[2] flat = {-1, 64}> {
      r = Reshape(x, flat)
      a = Relu(r)
      y = Sigmoid(a)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    got = shapes(optimized)
    assert got["r"] == ["batch*seq", 64] and got["a"] == ["batch*seq", 64]
    assert_same_outputs(model, optimized)


def test_range_and_slice_lengths():
    model = parse("""g (float[batch,seq] x, float[1,512] pos) => (int64[L] r, float[1,P] p) <int64 zero = {0}, int64 one = {1},
                                                                            int64[1] axes = {1}> {
      s = Shape(x)
      n = Gather<axis = 0>(s, one)
      r = Range(zero, n, one)
      n1 = Unsqueeze(n, zero)
      z1 = Unsqueeze(zero, zero)
      p = Slice(pos, z1, n1, axes)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    got = shapes(optimized)
    assert got["r"] == ["L"]  # a named output keeps its name...
    assert got["p"] == [1, "P"]
    inner = parse(onnx.printer.to_text(model.graph).replace("=> (int64[L] r, float[1,P] p)", "=> (int64[?] r, float[1,?] p)"))
    got = shapes(optimize_with(inner, PASSES)[0])
    assert got["r"] == ["seq"] and got["p"] == [1, "min(512,seq)"]  # ...an unnamed one gets the computed one


CAUSAL_MASK = """g (float[batch,4,seq,seq] scores, bool[1,1,128,128] mask) => (float[batch,4,?,?] y)
                  <int64[1] z = {0}, int64[2] zeros = {0, 0}, int64[2] axes = {2, 3}, int64 two = {2},
                   float minf = {-1e9}> {
  s = Shape(scores)
  n = Gather<axis = 0>(s, two)
  n1 = Unsqueeze(n, z)
  ends = Concat<axis = 0>(n1, n1)
  m = Slice(mask, zeros, ends, axes)
  y = Where(m, scores, minf)
}"""


def test_causal_mask_slice_broadcast_against_seq_is_seq():
    """scores [batch, 4, seq, seq] masked by mask[:, :, :seq, :seq] of a [1, 1, 128, 128] buffer:
    the slice is min(128,seq) long, and broadcast against seq it can only be seq."""
    model = parse(CAUSAL_MASK)
    optimized, _ = optimize_with(model, PASSES)
    got = shapes(optimized)
    assert got["m"] == [1, 1, "min(128,seq)", "min(128,seq)"]
    assert got["y"] == ["batch", 4, "seq", "seq"]
    rng = np.random.default_rng(0)
    for n in (1, 5):
        feeds = {"scores": rng.standard_normal((2, 4, n, n)).astype(np.float32),
                 "mask": rng.integers(0, 2, (1, 1, 128, 128)).astype(bool)}
        assert_same_outputs(model, optimized, [feeds])


def test_what_a_min_name_stands_for_belongs_to_one_analysis_run():
    """The min(128,seq) fact that decides the broadcast is the run's own: a second run learns
    it again from the Slice, and a run over another graph starts with none."""
    graph = gs.import_onnx(parse(CAUSAL_MASK))
    first, second = Analysis(graph), Analysis(graph)
    for run in (first, second):
        assert run.minima == {"min(128,seq)": (Expr.atom("seq"), c(128))}
        y = next(t for t in graph.outputs if t.name == "y")
        assert [str(d) for d in run.shape(y)] == ["batch", "4", "seq", "seq"]
    assert first.minima is not second.minima
    other = gs.import_onnx(parse("""g (float[batch,seq] x) => (float[batch,seq] y) { y = Relu(x) }"""))
    assert Analysis(other).minima == {}


@pytest.mark.parametrize("written", [-1, 0])
def test_negative_and_contradicted_zero_dims_are_replaced(written):
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      a = Relu(x)
      b = Relu(a)
      y = Identity(b)
    }""")
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [written, 4]))
    optimized, _ = optimize_with(model, PASSES)
    got = shapes(optimized)
    assert got["a"] == ["N", 4] and got["b"] == ["N", 4] and got["y"] == ["N", 4]
    assert_same_outputs(model, optimized)


def test_graph_inputs_and_unknown_dims_are_never_frozen():
    model = parse("""g (float[N,?] x) => (float[N,?] y) {
      a = Relu(x)
      y = Identity(a)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert list(optimized.graph.input) == list(model.graph.input)
    dim = shapes(optimized)["a"][1]
    assert shapes(optimized)["a"][0] == "N" and not isinstance(dim, int)  # unknown, or ONNX's unk__ name


def test_second_run_changes_nothing_and_inspect_is_silent():
    once, _ = optimize_with(parse(SPLIT), PASSES)
    again, report = optimize_with(once, PASSES)
    assert report.iterations == 1 and shapes(again) == shapes(once)
    assert inspect_pass(parse(SPLIT), "symbolic-shapes") == {}
