"""eliminate-dead-code: nodes no graph output depends on go; inputs and live nodes stay."""

from __future__ import annotations

import numpy as np

from tests.helpers import assert_same_outputs, check_exact, check_unchanged, inspect_pass, op_counts, optimize_with, parse, removed_by

PASSES = ["eliminate-dead-code"]


def test_dead_branch_is_removed():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      a = Relu(x)
      [dead_sig] d = Sigmoid(a)
      [dead_exp] e = Exp(d)
      [dead_mul] f = Mul(e, a)
      y = Neg(a)
    }""")
    optimized, report = check_exact(model, PASSES, removed=["Sigmoid", "Exp", "Mul"])
    assert op_counts(optimized) == {"Relu": 1, "Neg": 1}
    for node in ("dead_sig", "dead_exp", "dead_mul"):
        assert removed_by(report, node) == ["eliminate-dead-code"], node


def test_unused_graph_input_and_initializers():
    """An unused graph input stays (it is the interface); an unused initializer goes."""
    model = parse("""g (float[N,4] x, float[N,4] unused) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}, float[4] spare = {5, 6, 7, 8}> {
      d = Add(x, spare)
      y = Mul(x, w)
    }""")
    optimized, _ = check_exact(model, PASSES, removed=["Add"])
    assert [i.name for i in optimized.graph.input] == ["x", "unused"]
    assert [t.name for t in optimized.graph.initializer] == ["w"]


def test_node_with_one_used_output_stays():
    model = parse("""g (float[N,4] x) => (float[N,2] y) <int64[1] k = {2}> {
      values, indices = TopK(x, k)
      y = Relu(values)
    }""")
    check_unchanged(model, PASSES, kept=["TopK", "Relu"])


def test_tensor_read_only_inside_a_subgraph_is_live():
    """``a`` feeds the If only through its branches (outer scope): Relu must stay."""
    model = parse("""g (float[N,4] x, bool cond) => (float[N,4] y) {
      a = Relu(x)
      [dead] unused = Exp(x)
      y = If(cond) <then_branch = t () => (float[N,4] p) { p = Neg(a) },
                    else_branch = e () => (float[N,4] q) { q = Abs(a) }>
    }""")
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Relu": 1, "If": 1}
    assert removed_by(report, "dead") == ["eliminate-dead-code"]
    rng = np.random.default_rng(0)
    for n in (1, 3):
        for cond in (True, False):
            feeds = {"x": rng.standard_normal((n, 4)).astype(np.float32), "cond": np.array(cond)}
            assert_same_outputs(model, optimized, [feeds])


def test_dead_if_whose_branch_reads_a_node_is_removed_with_it():
    model = parse("""g (float[N,4] x, bool cond) => (float[N,4] y) {
      a = Sigmoid(x)
      dead = If(cond) <then_branch = t () => (float[N,4] p) { p = Neg(a) },
                       else_branch = e () => (float[N,4] q) { q = Abs(a) }>
      y = Relu(x)
    }""")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Relu": 1}
    rng = np.random.default_rng(0)
    assert_same_outputs(model, optimized, [{"x": rng.standard_normal((3, 4)).astype(np.float32),
                                            "cond": np.array(True)}])


def test_graph_output_read_by_another_node_stays():
    model = parse("""g (float[N,4] x) => (float[N,4] y, float[N,4] z) {
      y = Relu(x)
      z = Neg(y)
    }""")
    optimized, report = check_unchanged(model, PASSES, kept=["Relu", "Neg"])
    assert report.iterations == 1 and report.events == []


def test_inspect_lists_every_dead_node_and_nothing_else():
    model = parse("""g (float[N,4] x) => (float[N,4] y) {
      [live] a = Relu(x)
      [d1] b = Sigmoid(a)
      [d2] c = Exp(b)
      [live2] y = Neg(a)
    }""")
    findings = inspect_pass(model, "eliminate-dead-code", infer_shapes=False)
    assert {n: [(f.applies, f.message) for f in fs] for n, fs in findings.items()} == {
        "d1": [(True, "remove: no graph output depends on it")],
        "d2": [(True, "remove: no graph output depends on it")],
    }
