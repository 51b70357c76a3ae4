"""eliminate-common-subexpressions: same op, attributes and inputs -> one node.

Never merged: nondeterministic ops (training Dropout included), nodes with subgraphs,
nodes whose outputs are both graph outputs.
"""

from __future__ import annotations

import numpy as np

from tests.helpers import (assert_same_outputs, check_exact, check_unchanged, inspect_pass, op_counts,
                           optimize_with, parse, removed_by)

PASSES = ["eliminate-common-subexpressions"]


def test_duplicates_merge_and_merges_cascade_in_one_round():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      [r1] a1 = Relu(x)
      [r2] a2 = Relu(x)
      [s1] b1 = Sigmoid(a1)
      [s2] b2 = Sigmoid(a2)
      [m1] c1 = Mul(b1, a1)
      [m2] c2 = Mul(b2, a2)
      y = Add(c1, c2)
    }""")
    optimized, report = check_exact(model, PASSES)
    assert op_counts(optimized) == {"Relu": 1, "Sigmoid": 1, "Mul": 1, "Add": 1}
    assert [(e.node, e.pass_name) for e in report.events if e.node in ("r2", "s2", "m2")] == \
        [("r2", PASSES[0]), ("s2", PASSES[0]), ("m2", PASSES[0])]
    assert report.passes[0].runs == 2  # one changing run, one to confirm the fixed point


def test_duplicate_convs_with_equal_attributes_merge():
    weights = ", ".join(str(i % 7 - 3) for i in range(2 * 3 * 3 * 3))
    model = parse(f"""g (float[N,3,8,8] x) => (float[N,2,8,8] y) <float[2,3,3,3] w = {{{weights}}}, float[2] b = {{0.5, -1}}> {{
      c1 = Conv<pads = [1, 1, 1, 1], kernel_shape = [3, 3]>(x, w, b)
      c2 = Conv<pads = [1, 1, 1, 1], kernel_shape = [3, 3]>(x, w, b)
      y = Sub(c1, c2)
    }}""")
    optimized, _ = check_exact(model, PASSES)
    assert op_counts(optimized) == {"Conv": 1, "Sub": 1}


def test_identical_constant_nodes_merge():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      k1 = Constant<value = float[4] {1, 2, 3, 4}>()
      k2 = Constant<value = float[4] {1, 2, 3, 4}>()
      k3 = Constant<value = float[4] {1, 2, 3, 5}>()
      a = Mul(x, k1)
      b = Add(a, k2)
      y = Sub(b, k3)
    }""")
    optimized, _ = check_exact(model, PASSES)
    assert op_counts(optimized)["Constant"] == 2


def test_multi_output_duplicates_merge():
    model = parse("""g (float[N,4] x) => (float[N,2] y) <int64[2] sp = {2, 2}> {
      a1, b1 = Split<axis = 1>(x, sp)
      a2, b2 = Split<axis = 1>(x, sp)
      p = Mul(a1, b2)
      y = Add(p, b1)
      z = Identity(a2)
    }""".replace("      z = Identity(a2)\n", ""))
    optimized, _ = check_exact(model, PASSES)
    assert op_counts(optimized)["Split"] == 1


def test_one_graph_output_duplicate_merges_keeping_the_output_name():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[N,4] z) {
      a = Relu(x)
      y = Relu(x)
      z = Sigmoid(a)
    }""")
    optimized, _ = check_exact(model, PASSES)
    assert [(n.op_type, list(n.input), list(n.output)) for n in optimized.graph.node] == \
        [("Relu", ["x"], ["y"]), ("Sigmoid", ["y"], ["z"])]


# ---------------------------------------------------------------- near misses

def test_two_graph_outputs_are_not_merged():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[N,4] z) {
      y = Relu(x)
      [second] z = Relu(x)
    }""")
    optimized, report = check_unchanged(model, PASSES, kept=["Relu"])
    assert removed_by(report, "second") == []
    (finding,) = inspect_pass(model, PASSES[0], infer_shapes=False)["second"]
    assert not finding.applies and "both write graph outputs" in finding.message


def test_different_attributes_or_operand_order_are_not_merged():
    model = parse("""g (float[N,4] x, float[N,4] w) => (float[N,4] y, float[N,4] z) {
      s0 = Softmax<axis = 0>(x)
      s1 = Softmax<axis = 1>(x)
      d1 = Sub(x, w)
      d2 = Sub(w, x)
      y = Add(s0, s1)
      z = Add(d1, d2)
    }""")
    check_unchanged(model, PASSES, kept=["Softmax", "Sub", "Add"])


def test_random_ops_are_not_merged():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      r1 = RandomUniformLike<low = 0.0, high = 1e-9>(x)
      r2 = RandomUniformLike<low = 0.0, high = 1e-9>(x)
      y = Sub(r1, r2)
    }""")
    check_unchanged(model, PASSES, kept=["RandomUniformLike"])


def test_training_dropouts_are_not_merged():
    """Two training-mode Dropouts draw two masks: merging them would make a - b zero."""
    model = parse("""g (float[N,64] x) => (float[N,64] y) {
      r = Constant<value = float {0.5}>()
      t = Constant<value = bool {1}>()
      [d1] a = Dropout(x, r, t)
      [d2] b = Dropout(x, r, t)
      y = Sub(a, b)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Dropout"] == 2
    assert "d2" not in inspect_pass(model, PASSES[0], infer_shapes=False)
    x = np.ones((3, 64), np.float32)
    from tests.helpers import run_ort
    assert np.any(run_ort(optimized, {"x": x})["y"] != 0)


def test_nodes_with_subgraphs_are_not_merged():
    model = parse("""g (float[N,4] x, bool cond) => (float[N,4] y) {
      i1 = If(cond) <then_branch = t1 () => (float[N,4] p) { p = Neg(x) }, else_branch = e1 () => (float[N,4] q) { q = Abs(x) }>
      i2 = If(cond) <then_branch = t2 () => (float[N,4] p) { p = Neg(x) }, else_branch = e2 () => (float[N,4] q) { q = Abs(x) }>
      y = Add(i1, i2)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["If"] == 2
    rng = np.random.default_rng(0)
    assert_same_outputs(model, optimized, [{"x": rng.standard_normal((3, 4)).astype(np.float32),
                                            "cond": np.array(c)} for c in (True, False)])


def test_inspect_names_the_node_kept():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      [first] a = Relu(x)
      [second] b = Relu(x)
      [third] c = Relu(x)
      [other] d = Sigmoid(x)
      s = Sum(a, b, c)
      y = Mul(s, d)
    }""")
    findings = inspect_pass(model, PASSES[0], infer_shapes=False)
    assert {n: [(f.applies, f.message) for f in fs] for n, fs in findings.items()} == {
        "second": [(True, "merge into identical node 'first'")],
        "third": [(True, "merge into identical node 'first'")],
    }
    optimized, report = check_exact(model, PASSES)
    assert [e.action for e in report.events if e.node == "third"] == ["merged into identical node 'first'"]


def test_custom_domain_ops_are_not_merged():
    """fusekit cannot know that an op without an ONNX schema is deterministic."""
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1, "ai.onnx.ml" : 3]>
    g (float[N,4] x) => (float[N,4] y, float[N,4] z) {
      a = com.microsoft.Sampler(x)
      b = com.microsoft.Sampler(x)
      y = Sub(a, b)
      n1 = ai.onnx.ml.Normalizer<norm = "L1">(x)
      n2 = ai.onnx.ml.Normalizer<norm = "L1">(x)
      z = Sub(n1, n2)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Sampler": 2, "Normalizer": 1, "Sub": 2}
