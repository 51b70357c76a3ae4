"""channels-last-mean: a spatial mean of a rank-4 tensor becomes a mean over its NHWC transpose.

Property: x is [B, C, H, W] (B dynamic or static), after a Relu; the pool is ReduceMean
over the spatial axes (spelled [2, 3], [3, 2], [-2, -1] or [2, -1]; axes as attribute at
opsets 13 and 17, as a constant input at 18; keepdims=0) or GlobalAveragePool then
Flatten (axis 1 or -3), read by a Gemm or a graph output. After the pass one Transpose
(perm [0, 2, 3, 1]) feeds one ReduceMean over [1, 2] with keepdims=0, no pool or Flatten
is left, outputs match under onnxruntime at B = 1 and 3 (1e-5), ``inspect`` says what it
did and nothing is left to rewrite. Near misses keep the graph and say why: keepdims=1,
other axes, rank 3, a pool read by a Conv (a squeeze-excite block), a Flatten to another
axis, a pool that is a graph output, axes computed at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from tests.fusion_helpers import zoo_run
from tests.helpers import inspect_pass, op_counts, optimize_with, parse
from tests.rewrite_checks import dims, max_abs_diff, verdicts

PASS = "channels-last-mean"


def run(model: onnx.ModelProto) -> onnx.ModelProto:
    optimized, _ = optimize_with(model, [PASS, "infer-shapes"])
    max_abs_diff(model, optimized)
    again, _ = optimize_with(optimized, [PASS, "infer-shapes"])
    assert op_counts(again) == op_counts(optimized), "not at a fixed point after one run"
    return optimized


def _floats(rng, count: int) -> str:
    return ", ".join(str(float(v)) for v in np.round(rng.standard_normal(count), 3))


@st.composite
def pools(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    form = draw(st.sampled_from(["reduce-mean", "global-average-pool"]))
    opset = draw(st.sampled_from([13, 17, 18]))
    shape = [draw(st.sampled_from(["B", 1, 2])), *(draw(st.integers(1, 4)) for _ in range(3))]
    c = shape[1]
    inits, body = [], ["  r = Relu(x)"]
    if form == "reduce-mean":
        axes = draw(st.sampled_from([[2, 3], [3, 2], [-2, -1], [2, -1]]))
        if opset >= 18:
            inits.append(f"int64[2] axes = {{{axes[0]}, {axes[1]}}}")
            body.append("  [pool] p = ReduceMean<keepdims = 0>(r, axes)")
        else:
            body.append(f"  [pool] p = ReduceMean<axes = [{axes[0]}, {axes[1]}], keepdims = 0>(r)")
    else:
        body += ["  [pool] g = GlobalAveragePool(r)",
                 f"  p = Flatten<axis = {draw(st.sampled_from([1, -3]))}>(g)"]
    if draw(st.booleans()):
        k = draw(st.integers(1, 3))
        inits += [f"float[{k},{c}] w = {{{_floats(rng, k * c)}}}", f"float[{k}] bias = {{{_floats(rng, k)}}}"]
        body.append("  y = Gemm<transB = 1>(p, w, bias)")
        out = f"float[{shape[0]},{k}] y"
    else:
        body.append("  y = Identity(p)")
        out = f"float[{shape[0]},{c}] y"
    text = (f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
            f"g (float[{dims(shape)}] x) => ({out}) <{', '.join(inits)}> {{\n" + "\n".join(body) + "\n}")
    return parse(text), form


@given(pools())
def test_spatial_mean_becomes_a_mean_over_the_channels_last_transpose(case):
    model, form = case
    note(onnx.printer.to_text(model.graph))
    optimized = run(model)
    note(onnx.printer.to_text(optimized.graph))
    counts = op_counts(optimized)
    assert counts["Transpose"] == 1 and counts["ReduceMean"] == 1, counts
    assert counts["GlobalAveragePool"] == counts["Flatten"] == 0
    (transpose,) = [n for n in optimized.graph.node if n.op_type == "Transpose"]
    (mean,) = [n for n in optimized.graph.node if n.op_type == "ReduceMean"]
    assert mean.input[0] == transpose.output[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in transpose.attribute} == {"perm": [0, 2, 3, 1]}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mean.attribute}
    assert attrs["keepdims"] == 0 and attrs.get("axes", [1, 2]) == [1, 2]
    (finding,) = inspect_pass(model, PASS)["pool"]
    assert finding.applies and finding.message.endswith("written as ReduceMean over axes [1, 2] of the NHWC transpose")
    assert not any(f.applies for fs in inspect_pass(optimized, PASS).values() for f in fs)


NEAR_MISSES = {
    "keepdims": ("g (float[B,4,3,3] x) => (float[B,4,1,1] y) { [pool] y = ReduceMean<axes = [2, 3]>(x) }",
                 "keepdims=1: the [N, C, 1, 1] result would need a transpose back"),
    "other axes": ("g (float[B,4,3,3] x) => (float[B,3] y) { [pool] y = ReduceMean<axes = [1, 3], keepdims = 0>(x) }",
                   "axes [1, 3] are not the spatial axes [2, 3]"),
    "rank 3": ("g (float[B,4,3] x) => (float[B] y) { [pool] y = ReduceMean<axes = [1, 2], keepdims = 0>(x) }",
               "input rank is 3, not 4"),
    "squeeze-excite": ("g (float[B,4,3,3] x) => (float[B,4,3,3] y) <float[4,4,1,1] w = {"
                       + ", ".join(["0.25"] * 16) + "}> {\n"
                       "  [pool] g = GlobalAveragePool(x)\n  c = Conv(g, w)\n  s = Sigmoid(c)\n  y = Mul(x, s)\n}",
                       "GlobalAveragePool is not read only by Flatten(axis=1)"),
    "flatten axis 2": ("g (float[B,4,3,3] x) => (float[M,1] y) { [pool] g = GlobalAveragePool(x)\n"
                       "  y = Flatten<axis = 2>(g) }", "GlobalAveragePool is not read only by Flatten(axis=1)"),
    "pool is an output": ("g (float[B,4,3,3] x) => (float[B,4,1,1] g, float[B,4] y) { [pool] g = GlobalAveragePool(x)\n"
                          "  y = Flatten(g) }", "GlobalAveragePool is not read only by Flatten(axis=1)"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_miss_is_kept_with_its_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
    optimized = run(model)
    assert op_counts(optimized) == op_counts(model)
    assert verdicts(model, PASS)["pool"] == (False, reason)


def test_axes_computed_at_run_time_are_kept():
    model = parse('<ir_version: 8, opset_import: ["" : 18]>\n'
                  "g (float[B,4,3,3] x, int64[2] axes) => (float[B,4] y) "
                  "{ [pool] y = ReduceMean<keepdims = 0>(x, axes) }")
    assert verdicts(model, PASS)["pool"] == (False, "reduction axes are not constant")


def test_resnet_pool_becomes_a_channels_last_mean():
    """The zoo ResNet's GlobalAveragePool + Flatten, through the default pipeline."""
    original, optimized, report, worst = zoo_run("resnet-tiny")
    assert op_counts(original)["GlobalAveragePool"] == 1
    counts = op_counts(optimized)
    assert counts["GlobalAveragePool"] == counts["Flatten"] == 0 and counts["Transpose"] == 1
    (mean,) = [n for n in optimized.graph.node if n.op_type == "ReduceMean"]
    (gemm,) = [n for n in optimized.graph.node if n.op_type == "Gemm"]
    assert gemm.input[0] == mean.output[0]
