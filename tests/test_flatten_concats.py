"""flatten-concats: Concat of Concats on the same axis as one Concat, equal to onnxruntime at
N = 1 and 3 (hypothesis: random trees of Concats up to depth 3 over leaves of different
sizes, axis written negative at random, the batch axis included); near misses (another
axis, an inner Concat read elsewhere or a graph output) declined with the reason."""

from __future__ import annotations

import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.helpers import op_counts, parse
from tests.rewrite_checks import check_pass, verdicts

PASS = "flatten-concats"


@st.composite
def concat_trees(draw):
    dims = ["N", draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    axis = draw(st.integers(0, 2))
    nodes, counter = [], iter(range(1000))

    def leaf():
        name = f"v{next(counter)}"
        if axis != 0 and draw(st.booleans()):  # a leaf of size 1 along the axis
            nodes.append(helper.make_node("ReduceMax", ["x"], [name], axes=[axis], keepdims=1))
            return name, 1, True
        nodes.append(helper.make_node(draw(st.sampled_from(["Relu", "Neg", "Sigmoid"])), ["x"], [name]))
        return name, dims[axis], False

    def tree(depth):
        parts = [tree(depth + 1) if depth < 3 and draw(st.booleans()) else leaf()
                 for _ in range(draw(st.integers(1, 3)))]
        name = f"c{next(counter)}"
        written = axis - 3 if draw(st.booleans()) else axis
        nodes.append(helper.make_node("Concat", [p[0] for p in parts], [name], name=name, axis=written))
        sizes = [p[1] for p in parts]
        total = sum(sizes) if all(isinstance(s, int) for s in sizes) else None
        return name, total, False

    top, total, _ = tree(0)
    out = list(dims)
    out[axis] = total if total is not None else "M"
    graph = helper.make_graph(nodes + [helper.make_node("Identity", [top], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@settings(max_examples=60, deadline=None)
@given(concat_trees())
def test_nested_concats_flatten(model):
    note(onnx.printer.to_text(model.graph))
    onnx.checker.check_model(model, full_check=True)
    optimized = check_pass(model, PASS)
    assert op_counts(optimized)["Concat"] == 1
    top = next(n for n in optimized.graph.node if n.op_type == "Concat")
    leaves = [n for n in model.graph.node if n.op_type != "Concat" and n.op_type != "Identity"]
    assert len(top.input) >= len(leaves)


NESTED = """g (float[N,2,3] x) => (float[N,{out}] y{extra_out}) <float[1,2,1] k = {{1, 2}}> {{
  a = Relu(x)
  b = Neg(x)
  inner = Concat<axis = {inner_axis}>(a, b)
  [outer] y = Concat<axis = {outer_axis}>(inner, x){extra}
}}"""


def _case(inner_axis=-1, outer_axis=2, out="2,9", extra_out="", extra=""):
    return parse(NESTED.format(inner_axis=inner_axis, outer_axis=outer_axis, out=out, extra_out=extra_out,
                               extra=extra))


def test_same_axis_written_differently_flattens():
    model = _case()
    check_pass(model, PASS, expect={"Concat": 1})
    assert verdicts(model, PASS)["outer"] == (True, "1 inner Concat(s) on axis 2 flattened into this one")


def test_near_misses_are_declined():
    other_axis = parse("""g (float[N,2,3] x) => (float[N,4,9] y) {
      a = Relu(x)
      inner = Concat<axis = 1>(a, x)
      [outer] y = Concat<axis = 2>(inner, inner, inner) }""")
    check_pass(other_axis, PASS, unchanged=True)
    assert verdicts(other_axis, PASS)["outer"] == (False, "the inner Concat joins axis 1, this one axis 2")
    read = _case(extra_out=", float[N,2,6] z", extra="\n  z = Neg(inner)")
    check_pass(read, PASS, unchanged=True)
    applies, message = verdicts(read, PASS)["outer"]
    assert not applies and message.startswith("the inner Concat must stay: 'inner' is also read by Neg")
    output = _case(extra_out=", float[N,2,6] inner")
    check_pass(output, PASS, unchanged=True)
    assert verdicts(output, PASS)["outer"] == (False, "the inner Concat must stay: 'inner' is a graph output")
