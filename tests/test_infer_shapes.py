"""infer-shapes: adds dtype/shape facts, never changes a node or a graph input."""

from __future__ import annotations

import onnx

from fusekit.api import run
from tests.helpers import assert_same_outputs, check_exact, op_counts, optimize_with, parse

PASSES = ["infer-shapes"]


def shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Declared shape of every value_info / output: ints, dim names, or None."""
    found = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        found[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return found


MODEL = """g (float[N,3,8,8] x) => (float[N,72] y, float z) <float[2,3,3,3] w = {%s}, int64[2] flat = {0, -1}> {
  c = Conv<kernel_shape = [3, 3], strides = [1, 1]>(x, w)
  r = Relu(c)
  f = Reshape(r, flat)
  y = Identity(f)
  s = ReduceSum<keepdims = 0>(r)
  z = Identity(s)
}""" % ", ".join(["0.1"] * 54)


def test_intermediate_shapes_are_inferred_and_nothing_else_changes():
    model = parse(MODEL)
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == op_counts(model)
    assert report.events == [] and report.converged
    got = shapes(optimized)
    assert got["c"] == ["N", 2, 6, 6] and got["r"] == ["N", 2, 6, 6]
    assert got["f"][1] == 72  # the batch dim of a Reshape by 0 may get a fresh name
    assert optimized.graph.input[0] == model.graph.input[0]
    assert_same_outputs(model, optimized)


def test_graph_input_shapes_are_kept_as_declared():
    """Inference would not narrow inputs anyway; the pass must not touch them at all."""
    model = parse("""g (float[N,M] x, float[4] b) => (float[N,4] y) {
      y = Add(x, b)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert list(optimized.graph.input) == list(model.graph.input)


def test_second_run_finds_nothing_new():
    model = parse(MODEL)
    result = run(model, passes=PASSES)
    (stat,) = result.report.passes
    assert stat.rewrites > 0 and result.report.iterations == 2  # gained facts, then a quiet round
    again = run(result.to_proto(), passes=PASSES)
    assert again.report.passes[0].rewrites == 0 and again.report.iterations == 1


def test_shapes_let_remove_noops_see_a_same_shape_reshape():
    """Without shapes the Reshape is declined; with infer-shapes in the pipeline it goes."""
    model = parse("""g (float[N,4,5] x) => (float[N,4,5] y) <int64[3] s = {-1, 4, 5}> {
      a = Relu(x)
      b = Reshape(a, s)
      y = Sigmoid(b)
    }""")
    alone, _ = optimize_with(model, ["remove-noops"])
    assert op_counts(alone)["Reshape"] == 1
    check_exact(model, ["remove-noops", "infer-shapes"], removed=["Reshape"])


def test_op_inference_does_not_know_leaves_the_graph_valid():
    """A custom op has no shape function: its output stays unknown and the graph valid."""
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "custom.domain" : 1]>
    g (float[N,4] x) => (float[N,4] y) {
      a = custom.domain.Unknown(x)
      b = Relu(a)
      y = Identity(b)
    }""")
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == op_counts(model)
    assert report.converged
    assert shapes(optimized).get("a") in (None, [])


def test_inspect_has_nothing_to_report():
    """infer-shapes rewrites nothing, so lint and --trace get no findings from it."""
    from tests.helpers import inspect_pass

    assert inspect_pass(parse(MODEL), "infer-shapes", infer_shapes=False) == {}
