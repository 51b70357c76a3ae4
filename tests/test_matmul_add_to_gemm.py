"""matmul-add-to-gemm: a 2-D MatMul with constant weights and its bias Add become one Gemm.

Property: A is [M, K] (M dynamic or static), the weight a [K, N] constant or a Transpose
(perm [1, 0] or default) of an [N, K] constant, initializer or Constant node; the bias is
one of the shapes Gemm broadcasts without growing the result ([], [1], [N], [1, N],
[1, 1], and [M, 1], [M, N] for a static M), on either side of the Add; float32 or float64.
After the pass there is one Gemm and no MatMul, Add or Transpose; outputs match at
M = 1 and M = 3 and ``inspect`` says so. Near misses: a batched (rank-3) A, a bias that
grows the result, a bias that is a graph input, a product read elsewhere.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.pass_infra import Match, PassContext
from fusekit.passes.matmul_add_to_gemm import MatMulAddToGemmPass
from tests.helpers import parse
from tests.rewrite_checks import check_pass, dims, verdicts

PASS = "matmul-add-to-gemm"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))


def _tensor(dtype: str, name: str, shape, rng) -> str:
    values = ", ".join(str(float(v)) for v in np.round(rng.standard_normal(int(np.prod(shape))), 3))
    return f"{dtype}{f'[{dims(shape)}]' if shape else ''} {name} = {{{values}}}"


@st.composite
def linears(draw, near_miss: str | None = None):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(["float", "float", "double"]))
    m = draw(st.sampled_from(["M", 1, 2, 3]))
    k, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    inits, body, inputs = [], ["  a = Relu(x)"], [f"{dtype}[{dims([m, k])}] x"]
    if near_miss == "batched A":
        inputs = [f"{dtype}[{dims([m, 2, k])}] x"]
    layout = draw(st.sampled_from(["plain", "transposed", "transposed-default"]))
    as_node = draw(st.booleans())
    stored = [k, n] if layout == "plain" else [n, k]
    if as_node:
        body.append(f"  w = Constant<value = {_tensor(dtype, 'w', stored, rng)}>()")
    else:
        inits.append(_tensor(dtype, "w", stored, rng))
    if layout != "plain":
        body.append("  wt = Transpose(w)" if layout == "transposed-default" else "  wt = Transpose<perm = [1, 0]>(w)")
    body.append(f"  [matmul] p = MatMul(a, {'w' if layout == 'plain' else 'wt'})")
    biases = [[], [1], [n], [1, n], [1, 1]] + ([[m, 1], [m, n]] if isinstance(m, int) and near_miss != "batched A"
                                               else [])
    bias = draw(st.sampled_from(biases))
    if near_miss == "growing bias":
        bias = [2, 1, n]
    with_add = near_miss is not None or layout == "plain" or draw(st.integers(0, 3)) > 0
    out = ([m, 2, n] if near_miss == "batched A" else [m, n])
    if with_add:
        if near_miss == "bias is an input":
            inputs.append(f"{dtype}[{dims([n])}] b")
        else:
            inits.append(_tensor(dtype, "b", bias, rng))
        body.append(f"  q = Add({'b, p' if draw(st.booleans()) else 'p, b'})")
        if near_miss == "growing bias":
            out = [2, m, n]
    else:
        body.append("  q = Identity(p)")
    outputs = f"{dtype}[{dims(out)}] y"
    if near_miss == "product read elsewhere":
        outputs += f", {dtype}[{dims(out)}] z"
        body.append("  z = Neg(p)")
    body.append("  y = Sigmoid(q)")
    init = f" <{', '.join(inits)}>" if inits else ""
    text = f"g ({', '.join(inputs)}) => ({outputs}){init} {{\n" + "\n".join(body) + "\n}"
    return text, with_add, layout


@SOME
@given(linears())
def test_matmul_and_bias_become_one_gemm(case):
    text, with_add, layout = case
    note(text)
    model = parse(text)
    optimized = check_pass(model, PASS, expect={"Gemm": 1, "MatMul": 0, "Add": 0, "Transpose": 0})
    (gemm,) = [n for n in optimized.graph.node if n.op_type == "Gemm"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs.get("transB", 0) == (layout != "plain") and len(gemm.input) == (3 if with_add else 2)
    weights = [t for t in optimized.graph.initializer if t.name == gemm.input[1]] or \
        [n for n in optimized.graph.node if n.op_type == "Constant" and n.output[0] == gemm.input[1]]
    assert weights, "the weight is no longer the original constant: it was copied"
    applies, message = verdicts(model, PASS)["matmul"]
    assert applies and message.startswith("MatMul + Add fused into Gemm" if with_add else "MatMul with a transposed")


@SOME
@given(st.sampled_from(["batched A", "growing bias", "bias is an input", "product read elsewhere"])
       .flatmap(lambda why: st.tuples(st.just(why), linears(near_miss=why))))
def test_near_misses_keep_matmul_and_add(case):
    why, (text, _, layout) = case
    note(text)
    model = parse(text)
    if layout != "plain" and why != "batched A":  # the transposed weight alone still makes a Gemm
        check_pass(model, PASS, expect={"Gemm": 1, "MatMul": 0, "Add": 1})
        assert verdicts(model, PASS)["matmul"][1].startswith("MatMul with a transposed constant weight")
        return
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["matmul"]
    expected = {"batched A": "A has rank 3; Gemm is 2-D", "growing bias": "broadcasts beyond",
                "bias is an input": "not a constant bias", "product read elsewhere": "is also read by Neg"}[why]
    assert not applies and expected in message, message


def test_plain_weight_without_bias_is_kept():
    model = parse("g (float[M,3] x) => (float[M,2] y) <float[3,2] w = {1, 2, 3, 4, 5, 6}> {\n"
                  " [matmul] p = MatMul(x, w)\n y = Relu(p)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["matmul"] == (False, "no bias Add follows (its reader is Relu 'Relu_0')")


def test_non_constant_weight_declines():
    model = parse("g (float[M,3] x, float[3,2] w) => (float[M,2] y) <float[2] b = {1, 2}> {\n"
                  " [matmul] p = MatMul(x, w)\n y = Add(p, b)\n}")
    check_pass(model, PASS, unchanged=True)
    assert "not a constant" in verdicts(model, PASS)["matmul"][1]


def test_integer_matmul_declines():
    model = parse("g (int32[M,3] x) => (int32[M,2] y) <int32[3,2] w = {1, 2, 3, 4, 5, 6}, int32[2] b = {1, 2}> {\n"
                  " [matmul] p = MatMul(x, w)\n y = Add(p, b)\n}")
    assert verdicts(model, PASS)["matmul"] == (False, "element type int32 is not one Gemm takes")


def test_add_output_that_is_a_graph_output_keeps_its_name():
    model = parse("g (float[M,3] x) => (float[M,2] y) <float[3,2] w = {1, 2, 3, 4, 5, 6}, float[2] b = {1, 2}> {\n"
                  " a = Relu(x)\n [matmul] p = MatMul(a, w)\n y = Add(p, b)\n}")
    optimized = check_pass(model, PASS, expect={"Gemm": 1})
    assert [(n.op_type, list(n.output)) for n in optimized.graph.node] == [("Relu", ["a"]), ("Gemm", ["y"])]


def test_shared_transposed_weight_stays_shared():
    """Two MatMuls read Transpose(w) (tied weights): both use w with transB=1, no copy."""
    model = parse("g (float[M,3] x) => (float[M,2] y, float[M,2] z) <float[2,3] w = {1, 2, 3, 4, 5, 6}> {\n"
                  " wt = Transpose<perm = [1, 0]>(w)\n [m1] y = MatMul(x, wt)\n a = Relu(x)\n [m2] z = MatMul(a, wt)\n}")
    optimized = check_pass(model, PASS, expect={"Gemm": 2, "Transpose": 0})
    assert [t.name for t in optimized.graph.initializer] == ["w"]


def test_check_reads_the_weight_shape_not_its_values(monkeypatch):
    """A file-backed weight is not loaded by ``check`` (only its shape is needed there)."""
    def refuse(self):
        raise AssertionError("check loaded a weight")

    for layout in ("plain", "transposed"):
        shape = (3, 4) if layout == "plain" else (4, 3)
        w = gs.Constant("w", LazyValues(onnx.numpy_helper.from_array(np.ones(shape, np.float32), "w")))
        a = gs.Variable("a", np.float32, ["M", 3])
        b = gs.Constant("b", np.ones(4, np.float32))
        p, y = gs.Variable("p", np.float32), gs.Variable("y", np.float32)
        nodes = []
        if layout == "transposed":
            wt = gs.Variable("wt", np.float32)
            nodes.append(gs.Node("Transpose", inputs=[w], outputs=[wt], attrs={"perm": [1, 0]}))
            w = wt
        matmul = gs.Node("MatMul", inputs=[a, w], outputs=[p])
        nodes += [matmul, gs.Node("Add", inputs=[p, b], outputs=[y])]
        graph = gs.Graph(nodes=nodes, inputs=[a], outputs=[y], opset=17)
        with monkeypatch.context() as m:
            m.setattr(LazyValues, "load", refuse)
            verdict = MatMulAddToGemmPass().check(graph, matmul, PassContext())
        assert isinstance(verdict, Match), verdict
