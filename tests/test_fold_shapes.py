"""fold-shapes: shape arithmetic folds where the shapes fix it, and only there.

Positive cases: the folded ops are gone, outputs match at two sizes of every dynamic
dim (1 and 3), the checker passes. Near misses: a dynamic dim read at runtime stays, a
Reshape target that ONNX cannot say without guessing stays, and ``inspect`` says why.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import assert_same_outputs, check_exact, check_unchanged, inspect_pass, op_counts, optimize_with, parse

PASSES = ["infer-shapes", "symbolic-shapes", "fold-shapes", "fold-constants", "eliminate-dead-code"]


def constant_input(model: onnx.ModelProto, node_op: str, index: int = 1) -> list[int]:
    """The constant fed to input ``index`` of the only ``node_op`` node."""
    (node,) = [n for n in model.graph.node if n.op_type == node_op]
    name = node.input[index]
    for t in model.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t).tolist()
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return onnx.numpy_helper.to_array(n.attribute[0].t).tolist()
    raise AssertionError(f"{node_op} input {index} is not constant")


ATTENTION_SPLIT = """g (float[batch,seq,64] x) => (float[batch,seq,4,16] y) <int64 zero = {0}, int64 one = {1},
                                                                  int64[1] axes = {0}, int64[1] heads = {4}, int64 size = {16}> {
  s = Shape(x)
  b = Gather<axis = 0>(s, zero)
  n = Gather<axis = 0>(s, one)
  b1 = Unsqueeze(b, axes)
  n1 = Unsqueeze(n, axes)
  d1 = Unsqueeze(size, axes)
  target = Concat<axis = 0>(b1, n1, heads, d1)
  y = Reshape(x, target)
}"""


def test_symbolic_reshape_target_becomes_constant_with_copies():
    """[batch, seq, 64] -> Concat(batch, seq, 4, 16): batch and seq are the input's own dims: 0."""
    optimized, report = check_exact(parse(ATTENTION_SPLIT), PASSES,
                                    removed=["Shape", "Gather", "Unsqueeze", "Concat"])
    assert op_counts(optimized) == {"Reshape": 1}
    assert constant_input(optimized, "Reshape") == [0, 0, 4, 16]
    assert any(e.pass_name == "fold-shapes" for e in report.events)
    dims = [d.dim_param or d.dim_value for d in optimized.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 4, 16]  # never frozen


def test_merge_into_minus_one_only_beside_positive_constants():
    """[batch, seq, 64] -> [batch*seq, 64]: -1 is safe beside 64 (a batch of 0 still works)."""
    model = parse("""g (float[batch,seq,64] x) => (float[N,64] y) <int64 zero = {0}, int64 one = {1},
                                                             int64[1] axes = {0}, int64[1] c64 = {64}> {
      s = Shape(x)
      b = Gather<axis = 0>(s, zero)
      n = Gather<axis = 0>(s, one)
      bn = Mul(b, n)
      bn1 = Unsqueeze(bn, axes)
      target = Concat<axis = 0>(bn1, c64)
      y = Reshape(x, target)
    }""")
    optimized, _ = check_exact(model, PASSES, removed=["Shape", "Mul", "Concat"])
    assert constant_input(optimized, "Reshape") == [-1, 64]
    out = optimized.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["N", 64]  # the model's own output name is kept


def test_minus_one_beside_a_copied_dim_is_declined():
    """[batch, 4, seq, 16] -> [batch, 4, seq*16] would need 0 and -1: with batch = 0 that
    Reshape fails where the original does not, so the target stays computed."""
    model = parse("""g (float[batch,4,seq,16] x) => (float[batch,4,M] y) <int64 zero = {0}, int64 two = {2},
                                                             int64[1] axes = {0}, int64[1] four = {4}, int64 c16 = {16}> {
      s = Shape(x)
      b = Gather<axis = 0>(s, zero)
      n = Gather<axis = 0>(s, two)
      m = Mul(n, c16)
      b1 = Unsqueeze(b, axes)
      m1 = Unsqueeze(m, axes)
      target = Concat<axis = 0>(b1, four, m1)
      y = Reshape(x, target)
    }""")
    check_unchanged(model, PASSES, kept=["Shape", "Reshape", "Concat"])
    findings = inspect_pass(model, "fold-shapes")
    (reshape,) = [f for fs in findings.values() for f in fs if f.op == "Reshape"]
    assert not reshape.applies and "element 2 is 16*seq" in reshape.message


def test_static_part_of_a_shape_folds_dynamic_part_stays():
    """Shape(x)[1:] of [batch, 3, 8, 8] is [3, 8, 8]; Gather(Shape(x), 0) is batch: kept."""
    model = parse("""g (float[batch,3,8,8] x) => (int64[3] tail, int64 b) <int64[1] one = {1}, int64[1] big = {9223372036854775807},
                                                                  int64 zero = {0}> {
      s = Shape(x)
      tail = Slice(s, one, big)
      b = Gather<axis = 0>(s, zero)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Shape": 1, "Gather": 1, "Constant": 1}
    (const,) = [n for n in optimized.graph.node if n.op_type == "Constant"]
    assert list(const.output) == ["tail"]
    assert onnx.numpy_helper.to_array(const.attribute[0].t).tolist() == [3, 8, 8]
    assert_same_outputs(model, optimized)
    findings = inspect_pass(optimized, "fold-shapes")
    (shape,) = [f for fs in findings.values() for f in fs if f.op == "Shape"]
    assert "'x' has shape (batch, 3, 8, 8): its dynamic dims are read at runtime" in shape.message


def test_every_shape_folds_once_the_inputs_are_fixed():
    optimized, _ = optimize_with(parse(ATTENTION_SPLIT), None, input_shapes={"x": [2, 5, 64]})
    assert op_counts(optimized) == {"Reshape": 1}
    assert constant_input(optimized, "Reshape") in ([0, 0, 4, 16], [2, 5, 4, 16])
    for vi in list(optimized.graph.value_info) + list(optimized.graph.output):
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    assert_same_outputs(parse(ATTENTION_SPLIT), optimized, [{"x": x}])


def test_data_dependent_element_alone_becomes_minus_one():
    """A target element computed from tensor values (TensorRT cannot use it as a shape) is
    -1 when every other element is a positive constant: the Reshape then needs no data."""
    model = parse("""g (float[N,12] x, int64[K] ids) => (float[A,3] y) <int64[1] three = {3}, int64[1] axes = {0}> {
      total = ReduceSum<keepdims = 1>(ids)
      target = Concat<axis = 0>(total, three)
      y = Reshape(x, target)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Reshape": 1}
    assert constant_input(optimized, "Reshape") == [-1, 3]
    rng = np.random.default_rng(0)
    for n in (1, 3):
        ids = np.array([n * 4], dtype=np.int64)  # a valid target: n*12/3 rows
        x = rng.standard_normal((n, 12)).astype(np.float32)
        assert_same_outputs(model, optimized, [{"x": x, "ids": ids}])


def test_two_data_dependent_elements_are_reported():
    model = parse("""g (float[N,12] x, int64[2] t) => (float[A,B] y) {
      y = Reshape(x, t)
    }""")
    optimized, _ = optimize_with(model, PASSES)  # random values of t are no valid shape: no run
    assert op_counts(optimized) == op_counts(model) and not optimized.graph.initializer
    (finding,) = inspect_pass(model, "fold-shapes")["Reshape_0"]
    assert not finding.applies
    assert "element 0 depends on runtime data (graph input 't')" in finding.message


def test_allowzero_reshape_never_copies():
    model = parse("""<ir_version: 8, opset_import: ["" : 14]>
    g (float[batch,6] x) => (float[batch,2,3] y) <int64 zero = {0}, int64[1] axes = {0}, int64[2] rest = {2, 3}> {
      s = Shape(x)
      b = Gather<axis = 0>(s, zero)
      b1 = Unsqueeze(b, axes)
      target = Concat<axis = 0>(b1, rest)
      y = Reshape<allowzero = 1>(x, target)
    }""")
    optimized, _ = check_exact(model, PASSES, removed=["Shape", "Concat"])
    assert constant_input(optimized, "Reshape") == [-1, 2, 3]


def test_expand_target_dims_equal_to_the_input_become_ones():
    """Expand(x [batch, 1, seq], Concat(batch, 4, seq)) -> Expand(x, [1, 4, 1])."""
    model = parse("""g (float[batch,1,seq] x) => (float[batch,4,seq] y) <int64 zero = {0}, int64 two = {2},
                                                                  int64[1] axes = {0}, int64[1] four = {4}> {
      s = Shape(x)
      b0 = Gather<axis = 0>(s, zero)
      n0 = Gather<axis = 0>(s, two)
      b = Unsqueeze(b0, axes)
      n = Unsqueeze(n0, axes)
      target = Concat<axis = 0>(b, four, n)
      y = Expand(x, target)
    }""")
    optimized, _ = check_exact(model, PASSES, removed=["Shape", "Concat"])
    assert constant_input(optimized, "Expand") == [1, 4, 1]


def test_expand_to_another_inputs_dims_stays():
    """Expand(x [1, seq], Shape(ids [batch, seq])): batch is not a dim of x: kept dynamic."""
    model = parse("""g (float[1,seq] x, int64[batch,seq] ids) => (float[batch,seq] y) {
      s = Shape(ids)
      y = Expand(x, s)
    }""")
    check_unchanged(model, PASSES, kept=["Shape", "Expand"])


@pytest.mark.parametrize("op, target", [("Reshape", "s"), ("Expand", "s")])
def test_reshape_or_expand_to_its_own_shape_is_removed(op, target):
    model = parse(f"""g (float[batch,seq] x) => (float[batch,seq] y) {{
      a = Relu(x)
      s = Shape(a)
      r = {op}(a, {target})
      y = Sigmoid(r)
    }}""")
    check_exact(model, PASSES, removed=[op, "Shape"])


def test_shape_of_a_graph_output_with_static_shape_becomes_a_constant_output():
    model = parse("""g (float[2,3] x) => (int64[2] s) {
      s = Shape(x)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Constant": 1}
    assert_same_outputs(model, optimized)


def test_fixed_point_and_inspect_matches_run():
    model = parse(ATTENTION_SPLIT)
    findings = inspect_pass(model, "fold-shapes")
    applies = [f for fs in findings.values() for f in fs if f.applies]
    assert any(f.op == "Reshape" and "[0, 0, 4, 16]" in f.message for f in applies)
    optimized, report = optimize_with(model, PASSES)
    again, report2 = optimize_with(optimized, PASSES)
    assert report2.iterations == 1 and op_counts(again) == op_counts(optimized)
