"""dedupe-initializers: equal initializers (dtype, shape and bytes) become one; nothing else does."""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers import assert_same_outputs, check_exact, inspect_pass, optimize_with, parse

PASSES = ["dedupe-initializers"]


def initializer_names(model: onnx.ModelProto) -> list[str]:
    return sorted(t.name for t in model.graph.initializer)


def test_identical_initializers_merge_into_the_first():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w1 = {1, 2, 3, 4}, float[4] w2 = {1, 2, 3, 4},
                                                   float[4] w3 = {1, 2, 3, 4}, float[4] other = {4, 3, 2, 1}> {
      a = Mul(x, w1)
      b = Add(a, w2)
      c = Sub(b, w3)
      y = Div(c, other)
    }""")
    optimized, _ = check_exact(model, PASSES)
    assert initializer_names(optimized) == ["other", "w1"]
    assert [list(n.input) for n in optimized.graph.node] == [["x", "w1"], ["a", "w1"], ["b", "w1"], ["c", "other"]]


def test_same_bytes_of_another_dtype_or_shape_stay_apart():
    """float 1.0, int32 1065353216 and uint8 [0, 0, 128, 63] have the same four bytes."""
    model = parse("""g (float[N,4] x) => (float[N,4] y, int32[N,4] i, uint8[4] u, float[N,2,2] z)
        <float one = {1.0}, int32 ione = {1065353216}, uint8[4] bytes = {0, 0, 128, 63},
         float[4] row = {1, 2, 3, 4}, float[2,2] square = {1, 2, 3, 4}> {
      y0 = Mul(x, one)
      y = Add(y0, row)
      xi = Cast<to = 6>(x)
      i = Add(xi, ione)
      u = Identity(bytes)
      xr = Reshape(x, shape)
      shape = Constant<value = int64[3] {-1, 2, 2}>()
      z = Add(xr, square)
    }""".replace("      xr = Reshape(x, shape)\n      shape = Constant<value = int64[3] {-1, 2, 2}>()\n",
                 "      shape = Constant<value = int64[3] {-1, 2, 2}>()\n      xr = Reshape(x, shape)\n"))
    optimized, report = check_exact(model, PASSES)
    assert initializer_names(optimized) == initializer_names(model)
    assert report.iterations == 1


def test_signed_zeros_stay_apart_and_nans_merge():
    model = parse("""g (float[N,2] x) => (float[N,2] y) <float[2] pz = {0.0, 1.0}, float[2] nz = {-0.0, 1.0},
                                                   float[2] n1 = {nan, 2.0}, float[2] n2 = {nan, 2.0}> {
      a = Div(x, pz)
      b = Div(x, nz)
      c = Max(n1, x)
      d = Min(n2, x)
      s = Sum(a, b, c, d)
      y = IsNaN(s)
      yf = Cast<to = 1>(y)
    }""".replace("=> (float[N,2] y)", "=> (bool[N,2] y)").replace("      yf = Cast<to = 1>(y)\n", ""))
    optimized, _ = check_exact(model, PASSES)
    assert initializer_names(optimized) == ["n1", "nz", "pz"]


def test_string_initializers_merge():
    model = parse("""<ir_version: 9, opset_import: ["" : 19]>
    g (string[N] x) => (bool[N] y, bool[N] z) <string[1] s1 = {"a long string, not interned"}, string[1] s2 = {"a long string, not interned"},
                                                        string[1] s3 = {"b"}> {
      y = Equal(x, s1)
      e = Equal(x, s2)
      f = Equal(x, s3)
      z = Or(e, f)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert initializer_names(optimized) == ["s1", "s3"]
    feeds = [{"x": np.array(["a long string, not interned", "b", "c"], dtype=object)}, {"x": np.array(["b"], dtype=object)}]
    assert_same_outputs(model, optimized, feeds)


def test_initializer_read_inside_a_subgraph_is_rewired():
    model = parse("""g (float[N,4] x, bool cond) => (float[N,4] y) <float[4] w1 = {1, 2, 3, 4}, float[4] w2 = {1, 2, 3, 4}> {
      a = Mul(x, w1)
      y = If(cond) <then_branch = t () => (float[N,4] p) { p = Add(a, w2) },
                    else_branch = e () => (float[N,4] q) { q = Sub(a, w2) }>
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert initializer_names(optimized) == ["w1"]
    rng = np.random.default_rng(0)
    assert_same_outputs(model, optimized, [{"x": rng.standard_normal((n, 4)).astype(np.float32), "cond": np.array(c)}
                                           for n in (1, 3) for c in (True, False)])


def test_inspect_names_the_copy_and_the_kept_initializer():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w1 = {1, 2, 3, 4}, float[4] w2 = {1, 2, 3, 4}> {
      [first] a = Mul(x, w1)
      [second] y = Add(a, w2)
    }""")
    findings = inspect_pass(model, "dedupe-initializers", infer_shapes=False)
    assert {n: [(f.applies, f.message) for f in fs] for n, fs in findings.items()} == {
        "second": [(True, "read initializer 'w1' instead of its copy 'w2'")],
    }


def test_large_weights_equal_in_every_sampled_chunk_but_one_byte_stay_apart():
    """Large constants are compared by a sample first; equal samples then need equal bytes."""
    base = np.arange(1 << 16, dtype=np.float32)
    same, differs = base.copy(), base.copy()
    differs[12345] = -1.0  # between two sampled chunks
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w1"], ["a"]), onnx.helper.make_node("Add", ["a", "w2"], ["b"]),
         onnx.helper.make_node("Add", ["b", "w3"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1 << 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1 << 16])],
        [onnx.numpy_helper.from_array(base, "w1"), onnx.numpy_helper.from_array(differs, "w2"),
         onnx.numpy_helper.from_array(same, "w3")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    optimized, _ = check_exact(model, PASSES)
    assert initializer_names(optimized) == ["w1", "w2"]
