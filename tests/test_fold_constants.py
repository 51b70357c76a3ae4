"""fold-constants: constant regions become initializers, with the values onnxruntime gives.

Positive cases: the folded op types are gone, outputs match at N = 1 and N = 3, the result
passes the checker. Near misses: nondeterministic ops, subgraphs, sequences, other
domains and values over ``fold_max_bytes`` stay, and ``inspect`` says why.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from tests.helpers import (assert_same_outputs, check_exact, check_unchanged, inspect_pass, op_counts, optimize_with,
                           parse, removed_by)

PASSES = ["fold-constants"]
WITH_SHAPES = ["fold-constants", "infer-shapes"]


def test_constant_chain_folds_into_one_initializer():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}, float[4] v = {0.5, 0.5, 0.5, 0.5}> {
      two = Constant<value = float {2.0}>()
      [add] s = Add(w, v)
      [mul] m = Mul(s, two)
      [neg] k = Neg(m)
      y = Add(x, k)
    }""")
    optimized, report = check_exact(model, PASSES, removed=["Constant", "Mul", "Neg"])
    assert op_counts(optimized) == {"Add": 1}
    (add,) = optimized.graph.node
    (init,) = [t for t in optimized.graph.initializer if t.name in add.input]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), -(np.array([1, 2, 3, 4]) + 0.5) * 2)
    for node in ("add", "mul", "neg"):
        assert removed_by(report, node) == ["fold-constants"], node


def test_shape_arithmetic_of_weights_folds():
    """Shape(w) -> Gather -> Unsqueeze -> Concat -> Reshape target: a typical exporter idiom."""
    model = parse("""g (float[N,12] x) => (float[N,3,4] y) <float[3,4] w = {1,2,3,4,5,6,7,8,9,10,11,12},
                                                         int64 zero = {0}, int64[1] minus1 = {-1}> {
      sh = Shape(w)
      d0 = Gather<axis = 0>(sh, zero)
      d1 = Unsqueeze(d0, zero)
      rest = Slice(sh, one, two)
      one = Constant<value = int64[1] {1}>()
      two = Constant<value = int64[1] {2}>()
      target = Concat<axis = 0>(minus1, d1, rest)
      r = Reshape(x, target)
      y = Add(r, w)
    }""".replace("      rest = Slice(sh, one, two)\n      one = Constant<value = int64[1] {1}>()\n"
                 "      two = Constant<value = int64[1] {2}>()\n",
                 "      one = Constant<value = int64[1] {1}>()\n      two = Constant<value = int64[1] {2}>()\n"
                 "      rest = Slice(sh, one, two)\n"))
    optimized, _ = check_exact(model, PASSES, removed=["Shape", "Gather", "Unsqueeze", "Slice", "Concat", "Constant"])
    assert op_counts(optimized) == {"Reshape": 1, "Add": 1}


def test_transposed_weight_folds_into_matmul_operand():
    model = parse("""g (float[N,3] x) => (float[N,2] y) <float[2,3] w = {1, 2, 3, 4, 5, 6}> {
      wt = Transpose<perm = [1, 0]>(w)
      y = MatMul(x, wt)
    }""")
    check_exact(model, PASSES, removed=["Transpose"])


def test_constant_graph_output_keeps_its_name():
    """A folded value that is a graph output is produced by a Constant node of that name."""
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[4] c) <float[4] w = {1, 2, 3, 4}> {
      c = Mul(w, w)
      y = Add(x, c)
    }""")
    optimized, _ = check_exact(model, PASSES, removed=["Mul"])
    assert op_counts(optimized) == {"Add": 1, "Constant": 1}
    (const,) = [n for n in optimized.graph.node if n.op_type == "Constant"]
    assert list(const.output) == ["c"]
    # A second run has nothing left to do: the Constant graph output is not refolded.
    again, report = optimize_with(optimized, PASSES)
    assert report.iterations == 1 and op_counts(again) == op_counts(optimized)


def test_constant_node_straight_to_graph_output_stays():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[2] c) {
      [k] c = Constant<value = float[2] {1, 2}>()
      y = Relu(x)
    }""")
    optimized, report = check_unchanged(model, PASSES, kept=["Constant"])
    assert report.iterations == 1 and removed_by(report, "k") == []


def test_small_generators_fold_once_shapes_are_known():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <int64[1] four = {4}, float[1] half = {0.5}, int64[1] reps = {4}> {
      z = ConstantOfShape<value = float[1] {0.25}>(four)
      t = Tile(half, reps)
      e = Expand(half, four)
      s = Add(z, t)
      u = Add(s, e)
      y = Mul(x, u)
    }""")
    check_exact(model, WITH_SHAPES, removed=["ConstantOfShape", "Tile", "Expand"])


def test_integer_and_bool_values_fold_exactly():
    model = parse("""g (int64[N,4] x) => (int64[N,4] y, bool[N,4] b) <int64[4] w = {1, -2, 3, -4}, int64[4] v = {7, 7, 7, 7}> {
      d = Div(v, w)
      m = Mod<fmod = 0>(v, w)
      s = Add(d, m)
      y = Mul(x, s)
      g = Greater(s, w)
      b = And(g, g2)
      g2 = Less(x, v)
    }""".replace("      b = And(g, g2)\n      g2 = Less(x, v)\n", "      g2 = Less(x, v)\n      b = And(g, g2)\n"))
    check_exact(model, PASSES, removed=["Div", "Mod", "Greater"])


# ---------------------------------------------------------------- near misses

def test_random_normal_is_not_folded():
    """A tiny scale makes the value (almost) deterministic, so both graphs can be compared."""
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      [rand] r = RandomNormal<shape = [4], mean = 1.5, scale = 1e-9, dtype = 1>()
      [after] s = Mul(r, r)
      y = Add(x, s)
    }""")
    optimized, report = check_unchanged(model, PASSES, kept=["RandomNormal", "Mul"])
    assert removed_by(report, "rand") == [] and removed_by(report, "after") == []
    findings = inspect_pass(model, "fold-constants")
    assert findings["rand"][0].message == "RandomNormal is nondeterministic"
    assert not findings["rand"][0].applies
    assert "after" not in findings  # its input is not constant: not a candidate at all


@pytest.mark.parametrize("op", ["RandomUniformLike", "RandomNormalLike"])
def test_random_like_of_a_constant_is_not_folded(op):
    attrs = "low = 2.0, high = 2.000001" if op == "RandomUniformLike" else "mean = 2.0, scale = 1e-9"
    model = parse(f"""g (float[N,4] x) => (float[N,4] y) <float[4] w = {{1, 2, 3, 4}}> {{
      [rand] r = {op}<{attrs}>(w)
      y = Add(x, r)
    }}""")
    check_unchanged(model, PASSES, kept=[op])
    assert inspect_pass(model, "fold-constants")["rand"][0].message == f"{op} is nondeterministic"


def test_dropout_of_a_constant_is_left_to_remove_noops():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
      [drop] d = Dropout(w)
      y = Add(x, d)
    }""")
    check_unchanged(model, PASSES, kept=["Dropout"])
    assert inspect_pass(model, "fold-constants")["drop"][0].applies is False
    check_exact(model, None, removed=["Dropout"])


def test_node_with_subgraph_is_not_folded():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <bool cond = {1}, float[4] w = {1, 2, 3, 4}> {
      [branch] c = If(cond) <then_branch = t () => (float[4] a) { a = Neg(w) },
                             else_branch = e () => (float[4] b) { b = Abs(w) }>
      y = Add(x, c)
    }""")
    check_unchanged(model, PASSES, kept=["If"])
    assert inspect_pass(model, "fold-constants")["branch"][0].message == "node has a subgraph"


def test_sequence_ops_are_not_folded():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}, int64 zero = {0}> {
      [seq] s = SequenceConstruct(w, w)
      [at] a = SequenceAt(s, zero)
      y = Add(x, a)
    }""")
    check_unchanged(model, PASSES, kept=["SequenceConstruct", "SequenceAt"])
    findings = inspect_pass(model, "fold-constants")
    assert findings["seq"][0].message == "sequence/optional values are not folded"


def test_op_of_another_domain_is_not_evaluated():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "custom.domain" : 1]>
    g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
      [mine] c = custom.domain.MyOp(w)
      y = Add(x, c)
    }""")
    findings = inspect_pass(model, "fold-constants")
    assert findings["mine"][0].message == "op of domain 'custom.domain' is not evaluated"
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["MyOp"] == 1


def test_generator_over_the_size_cap_is_not_folded():
    """Tile of 16 bytes into 4 KiB: over fold_max_bytes=1024 and larger than its inputs."""
    model = parse("""g (float[N,1024] x) => (float[N,1024] y) <float[4] w = {1, 2, 3, 4}, int64[1] reps = {256}> {
      [tile] t = Tile(w, reps)
      y = Add(x, t)
    }""")
    options = {"fold_max_bytes": 1024}
    check_unchanged(model, WITH_SHAPES, kept=["Tile"], options=options)
    findings = inspect_pass(model, "fold-constants", options=options)
    assert findings["tile"][0].message == ("result would be 4096 bytes (over fold_max_bytes=1024) "
                                           "and is not only read as a weight")
    # Under the default cap (1 MiB) the same Tile folds.
    check_exact(model, WITH_SHAPES, removed=["Tile"])
    assert inspect_pass(model, "fold-constants")["tile"][0].applies


def test_value_over_the_size_cap_is_not_folded():
    """An outer product (not a generator) whose result outgrows the cap is left alone."""
    model = parse("""g (float[N,64,64] x) => (float[N,64,64] y) <float[64,1] a = {%s}, float[1,64] b = {%s}> {
      [outer] p = MatMul(a, b)
      y = Add(x, p)
    }""" % (", ".join(["0.5"] * 64), ", ".join(["2"] * 64)))
    optimized, report = check_unchanged(model, PASSES, kept=["MatMul"], options={"fold_max_bytes": 1024})
    assert removed_by(report, "outer") == []
    check_exact(model, PASSES, removed=["MatMul"])


def test_folding_that_does_not_grow_the_model_ignores_the_cap():
    """w + w is as large as w: folding it never adds bytes, whatever the cap."""
    values = ", ".join(str(i) for i in range(512))
    model = parse(f"""g (float[N,512] x) => (float[N,512] y) <float[512] w = {{{values}}}> {{
      d = Add(w, w)
      y = Add(x, d)
    }}""")
    optimized, _ = check_exact(model, PASSES, options={"fold_max_bytes": 16})
    assert op_counts(optimized) == {"Add": 1}


def test_chain_over_the_cap_folds_when_it_does_not_grow():
    """Transpose(Transpose(w)) of a 2 KiB weight is 2 KiB: foldable under a 1 KiB cap."""
    values = ", ".join(str(i) for i in range(512))
    model = parse(f"""g (float[N,16] x) => (float[N,32] y) <float[32,16] w = {{{values}}}> {{
      t1 = Transpose<perm = [1, 0]>(w)
      t2 = Transpose<perm = [1, 0]>(t1)
      t3 = Transpose<perm = [1, 0]>(t2)
      y = MatMul(x, t3)
    }}""")
    optimized, _ = check_exact(model, PASSES, removed=["Transpose"], options={"fold_max_bytes": 1024})
    assert op_counts(optimized) == {"MatMul": 1}


def test_constant_node_over_the_cap_folds_when_it_does_not_grow():
    values = ", ".join(str(i) for i in range(512))
    model = parse(f"""g (float[N,16] x) => (float[N,32] y) {{
      w = Constant<value = float[32,16] {{{values}}}>()
      t = Transpose<perm = [1, 0]>(w)
      y = MatMul(x, t)
    }}""")
    optimized, _ = check_exact(model, PASSES, removed=["Transpose", "Constant"], options={"fold_max_bytes": 1024})
    assert op_counts(optimized) == {"MatMul": 1}


def test_generator_fed_by_a_small_constant_region_is_capped():
    """Identity(Tile(Neg(w))): the Tile grows 16 bytes to 4 KiB however the region is cut."""
    model = parse("""g (float[N,1024] x) => (float[N,1024] y) <float[4] w = {1, 2, 3, 4}, int64[1] reps = {256}> {
      n = Neg(w)
      [tile] t = Tile(n, reps)
      i = Sigmoid(t)
      y = Add(x, i)
    }""")
    optimized, _ = check_unchanged(model, WITH_SHAPES, kept=["Tile"], options={"fold_max_bytes": 1024})
    assert op_counts(optimized)["Neg"] == 0  # the small part before the Tile still folds


def test_inspect_lists_matches_and_declines():
    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
      [k] c = Constant<value = float {3.0}>()
      [fold_me] a = Mul(w, c)
      [rand] r = RandomUniformLike<low = 0.0, high = 1e-9>(a)
      [live] s = Add(x, a)
      y = Add(s, r)
    }""")
    findings = inspect_pass(model, "fold-constants")
    assert {n: [(f.applies, f.message) for f in fs] for n, fs in findings.items()} == {
        "fold_me": [(True, "fold into a constant")],
        "rand": [(False, "RandomUniformLike is nondeterministic")],
    }
    optimized, report = check_exact(model, PASSES, removed=["Mul", "Constant"])
    assert removed_by(report, "fold_me") == ["fold-constants"]
    assert op_counts(optimized) == {"RandomUniformLike": 1, "Add": 2}


def test_node_kept_for_one_output_keeps_its_other_outputs_in_place():
    """Split(w) -> a (folded), b (feeds a MatMul over the cap): the Split stays, and b must
    still be its second output, not shift into the place of the folded a."""
    w = ", ".join(str(i) for i in range(128))
    model = parse(f"""g (float[N,64,64] x) => (float[N,64,64] y) <float[64,2] w = {{{w}}}, float[1,64] r = {{{", ".join(["1"] * 64)}}},
                                                                int64[2] sp = {{1, 1}}> {{
      [split] a, b = Split<axis = 1>(w, sp)
      [outer] p = MatMul(b, r)
      s = Add(x, a)
      y = Add(s, p)
    }}""")
    optimized, report = check_unchanged(model, PASSES, kept=["Split", "MatMul"], options={"fold_max_bytes": 1024})
    (split,) = [n for n in optimized.graph.node if n.op_type == "Split"]
    assert split.output[1] == "b"
    assert "a" in {t.name for t in optimized.graph.initializer}
    assert removed_by(report, "split") == []


def test_several_graph_outputs_of_one_node_do_not_become_several_nodes():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[1] s1, float[3] s2) <float[4] w = {1, 2, 3, 4}, int64[2] sp = {1, 3}> {
      s1, s2 = Split<axis = 0>(w, sp)
      y = Relu(x)
    }""")
    optimized, _ = check_unchanged(model, PASSES, kept=["Split"])
    assert len(optimized.graph.node) == 2


def test_one_graph_output_of_a_multi_output_node_folds():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[1] s1) <float[4] w = {1, 2, 3, 4}, int64[2] sp = {1, 3}> {
      s1, s2 = Split<axis = 0>(w, sp)
      t = Neg(s2)
      p = Pad(t, pads)
      pads = Constant<value = int64[2] {1, 0}>()
      y = Add(x, p)
    }""".replace("      p = Pad(t, pads)\n      pads = Constant<value = int64[2] {1, 0}>()\n",
                 "      pads = Constant<value = int64[2] {1, 0}>()\n      p = Pad(t, pads)\n"))
    optimized, _ = check_exact(model, WITH_SHAPES, removed=["Split", "Neg", "Pad"])
    assert op_counts(optimized) == {"Add": 1, "Constant": 1}


def test_independent_parts_fold_in_batches_with_the_same_values(monkeypatch):
    """With a budget of a few bytes every independent part is a batch of its own (one
    onnxruntime session each); the folded values are those of one session for all."""
    import onnx_graphsurgeon as gs

    from fusekit.passes import fold_constants

    model = parse("""g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}, float[4] v = {0.5, 0.5, 0.5, 0.5},
                                                   float[2,2] u = {1, 2, 3, 4}, int64[1] flat = {4}> {
      s = Add(w, v)
      m = Mul(s, s)
      t = Transpose<perm = [1, 0]>(u)
      r = Reshape(t, flat)
      n = Neg(v)
      a = Add(x, m)
      b = Add(a, r)
      y = Add(b, n)
    }""")
    whole, _ = check_exact(model, PASSES)
    region = [n for n in gs.import_onnx(model).nodes if not {"x", "a", "b"} & {i.name for i in n.inputs}]
    assert [[n.op for n in b] for b in fold_constants.batches(region, 1)] == [["Add", "Mul"], ["Transpose", "Reshape"], ["Neg"]]
    monkeypatch.setattr(fold_constants, "BATCH_INPUT_BYTES", 1)
    batched, _ = check_exact(model, PASSES)
    assert batched == whole


# ---------------------------------------------------------------- generated weights

CAP_1K = {"fold_max_bytes": 1024}


def test_generated_conv_weight_and_bias_over_the_cap_fold():
    """ConstantOfShape fills as Conv W (4 KiB) and B: read only as weights, they fold
    whatever fold_max_bytes says (TensorRT stores them in the engine either way)."""
    model = parse("""g (float[N,16,5,5] x) => (float[N,16,4,4] y) <int64[4] wshape = {16, 16, 2, 2}, int64[1] bshape = {16}> {
      [wgen] w = ConstantOfShape<value = float[1] {0.03}>(wshape)
      [bgen] b = ConstantOfShape<value = float[1] {0.5}>(bshape)
      y = Conv<kernel_shape = [2, 2], strides = [1, 1]>(x, w, b)
    }""")
    optimized, report = check_exact(model, WITH_SHAPES, removed=["ConstantOfShape"], options=CAP_1K)
    assert op_counts(optimized) == {"Conv": 1}
    assert removed_by(report, "wgen") == ["fold-constants"]
    assert inspect_pass(model, "fold-constants", options=CAP_1K)["wgen"][0].applies


def test_generated_weights_of_gemm_matmul_and_batchnorm_fold_through_layout_ops():
    """Gemm B and C, MatMul's constant operand (through Transpose and Reshape), and
    BatchNormalization's parameters (through Unsqueeze/Squeeze): all read as weights."""
    model = parse("""g (float[32,32] x) => (float[32,32] y) <int64[2] sq = {32, 32}, int64[1] flat = {1024}, int64[2] mat = {32, 32},
                                                  int64[1] ch = {32}, int64[1] zero = {0}> {
      [gb] b = ConstantOfShape<value = float[1] {0.01}>(sq)
      [gc] c = ConstantOfShape<value = float[1] {0.25}>(sq)
      g = Gemm<transB = 1>(x, b, c)
      [gm] m = Expand(half, flat)
      half = Constant<value = float[1] {0.02}>()
      mr = Reshape(m, mat)
      mt = Transpose<perm = [1, 0]>(mr)
      h = MatMul(g, mt)
      [gs] s = ConstantOfShape<value = float[1] {1.5}>(ch)
      su = Unsqueeze(s, zero)
      ss = Squeeze(su, zero)
      v = ConstantOfShape<value = float[1] {2.0}>(ch)
      y = BatchNormalization(h, ss, s, s, v)
    }""".replace("      [gm] m = Expand(half, flat)\n      half = Constant<value = float[1] {0.02}>()\n",
                 "      half = Constant<value = float[1] {0.02}>()\n      [gm] m = Expand(half, flat)\n"))
    optimized, _ = check_exact(model, WITH_SHAPES, removed=["ConstantOfShape", "Expand", "Reshape", "Transpose",
                                                             "Unsqueeze", "Squeeze", "Constant"], options=CAP_1K)
    assert op_counts(optimized) == {"Gemm": 1, "MatMul": 1, "BatchNormalization": 1}


def test_generated_value_read_by_an_activation_op_keeps_the_cap():
    """The same 4 KiB fill added to the activations is not a weight: it stays generated."""
    model = parse("""g (float[N,1024] x) => (float[N,1024] y) <int64[1] shape = {1024}> {
      [fill] f = ConstantOfShape<value = float[1] {0.5}>(shape)
      y = Add(x, f)
    }""")
    check_unchanged(model, WITH_SHAPES, kept=["ConstantOfShape"], options=CAP_1K)
    findings = inspect_pass(model, "fold-constants", options=CAP_1K)
    assert findings["fill"][0].message == ("result would be 4096 bytes (over fold_max_bytes=1024) "
                                           "and is not only read as a weight")


def test_generated_weight_also_read_elsewhere_keeps_the_cap():
    """A fill read as a MatMul weight and by an Add: one non-weight reader is enough to keep it."""
    model = parse("""g (float[32,32] x) => (float[32,32] y) <int64[2] shape = {32, 32}> {
      [fill] w = ConstantOfShape<value = float[1] {0.5}>(shape)
      m = MatMul(x, w)
      y = Add(m, w)
    }""")
    check_unchanged(model, WITH_SHAPES, kept=["ConstantOfShape"], options=CAP_1K)
    assert not inspect_pass(model, "fold-constants", options=CAP_1K)["fill"][0].applies


def test_generated_weight_computed_on_keeps_the_cap():
    """Neg(fill) -> Conv W: the fill itself is read by Neg, not as a weight (only layout
    ops pass a weight on); neither the fill nor what is computed from it folds."""
    model = parse("""g (float[N,16,5,5] x) => (float[N,16,4,4] y) <int64[4] wshape = {16, 16, 2, 2}> {
      [fill] w = ConstantOfShape<value = float[1] {0.03}>(wshape)
      n = Neg(w)
      y = Conv<kernel_shape = [2, 2]>(x, n)
    }""")
    check_unchanged(model, WITH_SHAPES, kept=["ConstantOfShape", "Neg"], options=CAP_1K)


def test_generated_weight_that_is_a_graph_output_keeps_the_cap():
    model = parse("""g (float[N,32] x) => (float[N,32] y, float[32,32] w) <int64[2] shape = {32, 32}> {
      [fill] w = ConstantOfShape<value = float[1] {0.5}>(shape)
      y = MatMul(x, w)
    }""")
    check_unchanged(model, WITH_SHAPES, kept=["ConstantOfShape"], options=CAP_1K)


def test_generated_weights_count_in_the_batch_budget_by_their_size():
    """Fills of tiny shape inputs would all go in one batch; as weights they are counted by
    the bytes they make (4 KiB each here), so a 5 KiB budget gives each a batch of its own."""
    import onnx_graphsurgeon as gs

    from fusekit.passes import fold_constants

    model = parse("""g (float[N,32] x) => (float[N,32] y) <int64[2] shape = {32, 32}> {
      a = ConstantOfShape<value = float[1] {0.5}>(shape)
      b = ConstantOfShape<value = float[1] {0.25}>(shape)
      m = MatMul(x, a)
      y = MatMul(m, b)
    }""")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    region = [n for n in graph.nodes if n.op == "ConstantOfShape"]
    weights = fold_constants.weight_values(graph)
    assert {id(n.outputs[0]) for n in region} <= weights
    assert len(fold_constants.batches(region, 5 << 10)) == 1  # no weights given: 32 bytes of inputs
    assert len(fold_constants.batches(region, 5 << 10, weights)) == 2


def test_light_model_weights_are_folded_and_outputs_match():
    """The onnx wheel's light_inception_v1 stores its weights as ConstantOfShape fills (some
    over 1 MiB: the 1024x1000 Gemm, 3x3 convolutions). Through the default pipeline, every
    Conv and Gemm weight is an initializer, no fill is left, and onnxruntime agrees."""
    from fusekit.api import optimize

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_inception_v1.onnx")
    model = onnx.load(path)
    optimized = optimize(model)  # IR 3: the new initializers are listed as graph inputs too
    onnx.checker.check_model(optimized, full_check=True)
    initializers = {t.name: t for t in optimized.graph.initializer}
    assert op_counts(optimized)["ConstantOfShape"] == 0
    weights = [i for n in optimized.graph.node if n.op_type in ("Conv", "Gemm") for i in n.input[1:]]
    assert weights and all(w in initializers for w in weights)
    assert max(np.prod(initializers[w].dims) * 4 for w in weights) > 1 << 20
    assert_same_outputs(model, optimized)


def test_quantized_weights_stay_quantized_and_an_int32_bias_folds():
    """Explicit quantization (QAT exports): TensorRT builds an INT8 Conv from DequantizeLinear
    of INT8 weights, so that DequantizeLinear stays; a QuantizeLinear of float weights folds
    into INT8 weights; DequantizeLinear of an INT32 bias, which TensorRT rejects, folds."""
    model = parse("""g (float[N,4,8,8] x) => (float[N,4,8,8] y)
      <int8[4,4,1,1] w = {1,-2,3,-4,5,-6,7,-8,9,-10,11,-12,13,-14,15,-16}, float ws = {0.1}, int8 wz = {0},
       float[4,4,1,1] fw = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}, float fs = {0.125},
       int32[4] b = {10,-20,30,-40}, float bs = {0.01}, float xs = {0.05}, int8 xz = {0}> {
      q = QuantizeLinear(x, xs, xz)
      dq = DequantizeLinear(q, xs, xz)
      wd = DequantizeLinear(w, ws, wz)
      fq = QuantizeLinear(fw, fs, wz)
      fd = DequantizeLinear(fq, fs, wz)
      bd = DequantizeLinear(b, bs)
      c = Conv(dq, wd, bd)
      y = Conv(c, fd)
    }""")
    optimized, report = check_exact(model, ["fold-constants"])
    ops = op_counts(optimized)
    assert ops["DequantizeLinear"] == 3 and ops["QuantizeLinear"] == 1  # x's pair, both weights' DQs
    weights = {t.name: t for t in optimized.graph.initializer}
    dequantized = [n for n in optimized.graph.node if n.op_type == "DequantizeLinear"]
    assert {weights[n.input[0]].data_type for n in dequantized if n.input[0] in weights} == {onnx.TensorProto.INT8}
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv" and len(n.input) == 3)
    assert weights[conv.input[2]].data_type == onnx.TensorProto.FLOAT  # the bias, folded
    findings = [f for fs in inspect_pass(model, "fold-constants", infer_shapes=False).values() for f in fs]
    assert sum(not f.applies and "stays quantized" in f.message for f in findings) == 2  # w's and fq's DQ
